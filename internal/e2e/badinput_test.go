package e2e

import (
	"encoding/binary"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/wire"
)

type rawClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/v1/train", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	return &rawClient{t: t, ws: ws}
}

func (c *rawClient) sendRaw(mt int, b []byte) {
	c.t.Helper()
	if err := c.ws.WriteMessage(mt, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) send(typ wire.Type, header any, payload []byte) {
	c.t.Helper()
	b, err := wire.Encode(typ, header, payload)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(websocket.BinaryMessage, b)
}

// next reads frames until one of type want arrives.
func (c *rawClient) next(want wire.Type) wire.Frame {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, b, err := c.ws.ReadMessage()
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", want, err)
		}
		f, err := wire.Decode(b)
		if err != nil {
			c.t.Fatalf("aggregator sent an undecodable frame: %v", err)
		}
		if f.Type == want {
			return f
		}
	}
}

// expectError reads the aggregator's error frame and checks its code,
// fatality and message.
func (c *rawClient) expectError(code string, fatal bool, msg string) {
	c.t.Helper()
	var e wire.Error
	if err := c.next(wire.TypeError).Parse(&e); err != nil {
		c.t.Fatal(err)
	}
	if e.Code != code || e.Fatal != fatal || !strings.Contains(e.Message, msg) {
		c.t.Errorf("error frame %+v; want code %q fatal %v with message containing %q", e, code, fatal, msg)
	}
	c.t.Logf("aggregator answered: [%s] %s", e.Code, e.Message)
}

func TestBadInputIsRefusedAndNothingIsLost(t *testing.T) {
	a, addr := aggregator(t, "-rounds", "3", "-token", "s3cret", "-max-message", "2000000")
	hello := wire.Hello{Name: "raw", Token: "s3cret"}
	// A well-behaved trainer works beside the bad clients from the start.
	trainer(t, addr, "good", "-token", "s3cret", "-slowdown", "10")

	t.Run("other protocol version", func(t *testing.T) {
		c := dialRaw(t, addr)
		b, _ := wire.Encode(wire.TypeHello, hello, nil)
		b[0] = 2
		c.sendRaw(websocket.BinaryMessage, b)
		c.expectError("version", true, "frame says version 2, this peer speaks version 1")
	})
	t.Run("wrong token", func(t *testing.T) {
		c := dialRaw(t, addr)
		c.send(wire.TypeHello, wire.Hello{Name: "raw", Token: "guess"}, nil)
		c.expectError("token", true, "wrong or missing token")
	})
	t.Run("malformed frames", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			mt   int
			b    []byte
			want string
		}{
			{"short", websocket.BinaryMessage, []byte{1, 1, 0}, "shorter than the 6-byte prefix"},
			{"text", websocket.TextMessage, []byte(`{"name":"x"}`), "binary messages only"},
			{"header overrun", websocket.BinaryMessage, binary.LittleEndian.AppendUint32([]byte{1, 1}, 500), "exceeds the 0 bytes left"},
			{"unknown type", websocket.BinaryMessage, []byte{1, 42, 0, 0, 0, 0}, "unknown message type 42"},
			{"not json", websocket.BinaryMessage, append(binary.LittleEndian.AppendUint32([]byte{1, 1}, 3), "{x}"...), "hello header"},
			{"unknown field", websocket.BinaryMessage, append(binary.LittleEndian.AppendUint32([]byte{1, 1}, 13), `{"nmae":"x"}`+" "...), "unknown field"},
		} {
			c := dialRaw(t, addr)
			c.sendRaw(tc.mt, tc.b)
			c.expectError("protocol", true, tc.want)
		}
	})
	t.Run("oversized message", func(t *testing.T) {
		c := dialRaw(t, addr)
		c.send(wire.TypeHello, hello, nil)
		c.next(wire.TypeWelcome)
		big, _ := wire.Encode(wire.TypeUpdate, wire.Update{}, make([]byte, 3_000_000))
		// The aggregator stops reading at the limit, so the write itself
		// may fail with a reset before the close frame is seen.
		werr := c.ws.WriteMessage(websocket.BinaryMessage, big)
		_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		var rerr error
		for rerr == nil {
			_, _, rerr = c.ws.ReadMessage()
		}
		if werr == nil && !websocket.IsCloseError(rerr, websocket.CloseMessageTooBig) {
			t.Errorf("after a 3 MB message (limit 2 MB): %v; want close 1009 (message too big)", rerr)
		}
		t.Logf("client saw: write %v; read %v", werr, rerr)
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(a.Stderr(), "code=too_large") {
			if time.Now().After(deadline) {
				t.Fatal("the aggregator's log does not name the oversized message (code=too_large)")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("invalid updates", func(t *testing.T) {
		c := dialRaw(t, addr)
		c.send(wire.TypeHello, hello, nil)
		var w wire.Welcome
		if err := c.next(wire.TypeWelcome).Parse(&w); err != nil {
			t.Fatal(err)
		}
		for i, bad := range []struct {
			mutate func(u *wire.Update, p []float32) []byte
			want   string
		}{
			{func(u *wire.Update, p []float32) []byte { p[5] = float32(math.NaN()); return wire.Float32Bytes(p) }, "update value 5 is NaN"},
			{func(u *wire.Update, p []float32) []byte { return wire.Float32Bytes(p[:100]) }, "tensor payload of 400 bytes, want 796840"},
			{func(u *wire.Update, p []float32) []byte { u.Samples = 7; return wire.Float32Bytes(p) }, "reports 7 samples"},
		} {
			c.send(wire.TypePull, wire.Pull{}, nil)
			var task wire.Task
			if err := c.next(wire.TypeTask).Parse(&task); err != nil {
				t.Fatal(err)
			}
			u := wire.Update{Task: task.ID, Round: task.Round, Version: task.Version, Client: task.Client, Samples: task.Rows, Loss: 1}
			p := make([]float32, w.Params)
			payload := bad.mutate(&u, p)
			c.send(wire.TypeUpdate, u, payload)
			c.expectError("update", false, bad.want)
			if i == 1 {
				// The connection is still served after a rejected update.
				if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second)); err != nil {
					t.Fatalf("connection closed after a rejected update: %v", err)
				}
			}
		}
	})

	// A trainer with the wrong token is refused and says why.
	bad := trainer(t, addr, "intruder", "-token", "nope")
	if code := bad.wait(30 * time.Second); code != 1 || !strings.Contains(bad.Stderr(), "wrong or missing token") {
		t.Errorf("trainer with a wrong token: exit %d, stderr %q", code, tail(bad.Stderr(), 300))
	}

	// The aggregator kept serving: the good trainer finishes the job and no
	// round lost an update.
	a.waitLine(doneRE, 2*time.Minute)
	for _, r := range rounds2(t, a.Lines(), 3) {
		if r.updates != 10 || r.dropped != 0 {
			t.Errorf("round %d: %d updates, %d dropped; want 10 and 0", r.round, r.updates, r.dropped)
		}
	}
	c := counters(t, a.Lines())
	if c["rejected"] != 3 || c["completed"] != 3*tasksPerRound {
		t.Errorf("counters %v; want rejected=3 completed=%d", c, 3*tasksPerRound)
	}
	if !regexp.MustCompile(`update rejected`).MatchString(a.Stderr()) {
		t.Error("the aggregator's log does not mention the rejected updates")
	}
}
