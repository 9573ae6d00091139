// Package internal holds the project's private packages. This file pins the
// design card's dependencies in go.mod while the packages that use them are
// written; it is removed once each is imported for real.
package internal

import (
	_ "github.com/apache/arrow-go/v18/arrow/ipc"
	_ "github.com/apache/arrow-go/v18/parquet/pqarrow"
	_ "github.com/gorilla/websocket"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "gonum.org/v1/gonum/blas/blas32"
)
