package coord

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"fedgather/internal/wire"
)

// BufferSize is the aggregator's websocket read and write buffer size.
// It only carries small frames and frame headers: gorilla/websocket writes
// a server's large payload (a model, a shard) straight to the socket and
// reads a large payload (an update) straight into the caller's slice, so
// bigger buffers do not make tensors move faster (measured with
// "go run ./bench transport -only hub": 4 KiB and 64 KiB side by side
// within noise). Each connection keeps its read buffer, so with 1,000
// trainers 4 KiB instead of 64 KiB saves about 60 MB.
const BufferSize = 4 << 10

// helloWait is how long a new connection may take to say hello.
const helloWait = 10 * time.Second

// writeWait bounds one frame's write.
const writeWait = 30 * time.Second

// closeWait bounds the closing handshake after a going-away close: how long
// the trainer has to answer with its own Close before the socket goes.
const closeWait = 2 * time.Second

// outFrame is a frame waiting for the connection's writer. Its slices are
// shared and not modified until written: only a prefix marked reuse is
// written over after that, by the connection's next task frame.
type outFrame struct {
	prefix  []byte // the frame's prefix and header, or a whole model frame
	payload []byte
	close   int       // after writing, close the connection with this close code (0: keep it open)
	reason  string    // the close frame's text
	model   *modelBuf // the buffer a model frame lies in, released once written or dropped
	reuse   bool      // prefix came from frameBuf and goes back to it once written
}

// conn is one trainer connection. Fields below mu-guarded are owned by the
// Hub's mutex; ws reads belong to the reader goroutine and ws writes to the
// writer goroutine.
type conn struct {
	hub  *Hub
	ws   *websocket.Conn
	id   string
	name string
	out  chan outFrame
	gone chan struct{} // closed when the writer has returned
	// readDone is closed when the reader has returned: a going-away close
	// waits for it (the closing handshake) before the socket goes.
	readDone chan struct{}
	// bufs holds prefix buffers the writer is done with, for the next
	// task frames: a trainer has one task at a time, so a few suffice.
	bufs chan []byte

	// guarded by hub.mu
	idle    bool
	version int
	shards  map[string]bool
	task    int64 // ID of the task it was last given, until it answers; 0 for none
	dead    bool
}

// sendLast queues f, a frame that closes the connection, and marks the
// connection dead so that nothing follows it (no task goes to it). It
// reports whether f was queued. The hub's mutex is held.
func (c *conn) sendLast(f outFrame) bool {
	if !c.send(f) {
		return false
	}
	c.dead = true
	return true
}

// send queues a frame without blocking. A trainer whose queue is full is
// not keeping up; it is disconnected and its task requeued by the reader.
func (c *conn) send(f outFrame) bool {
	if c.dead {
		return false
	}
	f.model.hold()
	select {
	case c.out <- f:
		return true
	default:
		f.model.release()
		c.dead = true
		_ = c.ws.Close()
		return false
	}
}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  BufferSize,
	WriteBufferSize: BufferSize,
	// Writers borrow a buffer per message rather than each connection
	// holding its own, touched by whichever ones were sent frames lately.
	WriteBufferPool: new(sync.Pool),
	CheckOrigin:     func(*http.Request) bool { return true }, // trainers are not browsers; the token authenticates
}

// ServeHTTP upgrades a trainer's request to a websocket and serves it until
// it disconnects.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		h.cfg.Logger.Warn("websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	ws.SetReadLimit(h.cfg.MaxMessage)
	h.serve(ws, r.RemoteAddr)
}

// refuse tells the peer why it is being disconnected, then closes.
func refuse(ws *websocket.Conn, code, msg string) {
	p, err := wire.Prefix(wire.TypeError, wire.Error{Code: code, Message: msg, Fatal: true})
	if err == nil {
		_ = ws.SetWriteDeadline(time.Now().Add(time.Second))
		_ = ws.WriteMessage(websocket.BinaryMessage, p)
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, truncate(msg, 120)), time.Now().Add(time.Second))
	}
	_ = ws.Close()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (h *Hub) serve(ws *websocket.Conn, remote string) {
	log := h.cfg.Logger.With("remote", remote)
	_ = ws.SetReadDeadline(time.Now().Add(helloWait))
	buf := make([]byte, 0, 512)
	f, r, err := readHead(ws, buf)
	if err == nil && f.Type == wire.TypeHello {
		err = wire.ExpectEnd(r, f.Type)
	}
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		err = fmt.Errorf("no hello within %v: %w", helloWait, err)
	}
	if err != nil {
		log.Warn("trainer refused", "err", err)
		refuse(ws, codeOf(err), err.Error())
		return
	}
	var hello wire.Hello
	if f.Type != wire.TypeHello {
		err = fmt.Errorf("first message is %s, want hello", f.Type)
	} else {
		err = f.Parse(&hello)
	}
	if err == nil && !h.checkToken(hello.Token) {
		log.Warn("trainer refused: wrong token", "name", hello.Name)
		refuse(ws, "token", "wrong or missing token: the aggregator requires the token given by its -token flag")
		return
	}
	if err != nil {
		log.Warn("trainer refused", "err", err)
		refuse(ws, "protocol", err.Error())
		return
	}
	if hello.Name == "" {
		hello.Name = remote
	}

	c := &conn{hub: h, ws: ws, name: hello.Name, out: make(chan outFrame, 64), gone: make(chan struct{}), readDone: make(chan struct{}), bufs: make(chan []byte, 2), version: -1, shards: make(map[string]bool)}
	h.mu.Lock()
	for _, s := range hello.Shards {
		if h.known[s] != nil {
			c.shards[s] = true
		}
	}
	h.nextConn++
	c.id = fmt.Sprintf("%s#%d", hello.Name, h.nextConn)
	welcome, _ := wire.Prefix(wire.TypeWelcome, wire.Welcome{ID: c.id, Model: h.cfg.Model, Params: h.cfg.Params, MaxMessage: h.cfg.MaxMessage})
	c.out <- outFrame{prefix: welcome}
	turnedAway := false
	switch {
	case h.finished != nil:
		p, _ := wire.Prefix(wire.TypeDone, h.finished)
		c.out <- outFrame{prefix: p}
	case h.leaving != "":
		c.sendLast(outFrame{close: websocket.CloseGoingAway, reason: h.leaving}) // as GoAway leaves the others
		turnedAway = true
	}
	h.conns[c] = struct{}{}
	if !turnedAway {
		h.stats.TrainersJoined++
	}
	if h.trainers[c.name] == nil {
		h.trainers[c.name] = &trainerRecord{name: c.name}
	}
	h.changedLocked()
	h.mu.Unlock()
	if turnedAway {
		log.Info("trainer turned away: the aggregator is stopping", "id", c.id)
	} else {
		log.Info("trainer joined", "id", c.id, "cached_shards", len(c.shards))
	}

	go c.writer()
	err = c.reader(buf)
	close(c.readDone)
	h.drop(c)
	close(c.out)
	<-c.gone
	_ = ws.Close()
	if err != nil && !errors.Is(err, io.EOF) && !websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway) {
		log.Info("trainer left", "id", c.id, "err", err)
	} else {
		log.Info("trainer left", "id", c.id)
	}
}

func codeOf(err error) string {
	if errors.Is(err, wire.ErrVersion) {
		return "version"
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		return "too_large"
	}
	return "protocol"
}

// readHead starts reading one binary websocket message: the frame's
// prefix and header are read (into buf when it fits) and checked; the
// payload is left in the returned reader.
func readHead(ws *websocket.Conn, buf []byte) (wire.Frame, io.Reader, error) {
	mt, r, err := ws.NextReader()
	if err != nil {
		return wire.Frame{}, nil, err
	}
	if mt != websocket.BinaryMessage {
		return wire.Frame{}, nil, fmt.Errorf("text websocket message; the protocol uses binary messages only")
	}
	f, err := wire.ReadHead(r, buf)
	return f, r, err
}

// reader handles the trainer's frames until the connection ends or the
// trainer breaks the protocol. An update's tensor is read straight from
// the socket into a buffer shared by all connections (so the hub holds
// one per update being read, not one per trainer) and validated once, as
// the accumulator folds it.
func (c *conn) reader(buf []byte) error {
	h := c.hub
	c.ws.SetPongHandler(func(string) error {
		return c.ws.SetReadDeadline(time.Now().Add(h.cfg.PongWait))
	})
	// Headers are parsed with one decoder, and updates into one Update,
	// for the connection's life, so that parsing a header allocates
	// nothing.
	var hd wire.HeaderDecoder
	var u wire.Update
	for {
		_ = c.ws.SetReadDeadline(time.Now().Add(h.cfg.PongWait))
		f, r, err := readHead(c.ws, buf)
		if err == nil && f.Type != wire.TypeUpdate {
			err = wire.ExpectEnd(r, f.Type)
		}
		if err != nil {
			return c.readFailed(err)
		}
		size := wire.PrefixLen + len(f.Header)
		switch f.Type {
		case wire.TypePull:
			var p wire.Pull
			if err := hd.Parse(f, &p); err != nil {
				c.fatal("protocol", err.Error())
				return err
			}
			h.countReceived(size)
			h.pull(c)
		case wire.TypeUpdate:
			u = wire.Update{}
			if err := hd.Parse(f, &u); err != nil {
				c.fatal("protocol", err.Error())
				return err
			}
			buf := <-h.updates
			if buf == nil {
				buf = make([]float32, h.cfg.Params)
			}
			n, perr := wire.ReadTensor(r, buf)
			if perr != nil && !errors.As(perr, new(*wire.SizeError)) {
				h.updates <- buf
				return c.readFailed(perr)
			}
			h.countReceived(size + n)
			// An eval result has no payload; gather checks which kind
			// the task wants.
			payload := buf
			if n == 0 && perr == nil {
				payload = nil
			}
			h.gather(c, &u, payload, perr)
			h.updates <- buf
		case wire.TypeError:
			var e wire.Error
			if err := hd.Parse(f, &e); err != nil {
				c.fatal("protocol", err.Error())
				return err
			}
			h.countReceived(size)
			h.trainerError(c, &e)
		default:
			err := fmt.Errorf("trainers may send hello (first only), pull, update and error; got %s", f.Type)
			c.fatal("protocol", err.Error())
			return err
		}
	}
}

// readFailed ends the connection after a failed read, telling the trainer
// why when the fault is in what it sent rather than in the network.
func (c *conn) readFailed(err error) error {
	var ce *websocket.CloseError
	if errors.As(err, &ce) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		err = fmt.Errorf("message larger than the %d-byte limit: %w", c.hub.cfg.MaxMessage, err)
	}
	if errors.Is(err, websocket.ErrReadLimit) || errors.Is(err, wire.ErrVersion) || isProtocol(err) {
		c.fatal(codeOf(err), err.Error())
	}
	return err
}

// isProtocol reports whether err came from decoding a frame, as opposed to
// the network.
func isProtocol(err error) bool {
	var ne interface{ Timeout() bool }
	return !errors.As(err, &ne)
}

// fatal sends a fatal Error frame through the writer, which then closes.
func (c *conn) fatal(code, msg string) {
	c.hub.cfg.Logger.Warn("disconnecting trainer", "id", c.id, "code", code, "err", msg)
	p, err := wire.Prefix(wire.TypeError, wire.Error{Code: code, Message: msg, Fatal: true})
	if err != nil {
		return
	}
	c.hub.mu.Lock()
	sent := c.sendLast(outFrame{prefix: p, close: websocket.ClosePolicyViolation})
	c.hub.mu.Unlock()
	if !sent { // already closing (going away, or a full queue): nothing to wait for
		return
	}
	// Give the writer a moment to deliver the reason before the socket goes.
	select {
	case <-c.gone:
	case <-time.After(time.Second):
	}
}

// writer owns all writes to the websocket: queued frames and pings.
func (c *conn) writer() {
	defer close(c.gone)
	h := c.hub
	ping := time.NewTicker(h.cfg.PingPeriod)
	defer ping.Stop()
	for {
		select {
		case f, ok := <-c.out:
			if !ok {
				_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
				return
			}
			var err error
			if len(f.prefix) > 0 { // a going-away frame only closes
				err = c.write(f)
			}
			f.model.release()
			if err != nil {
				_ = c.ws.Close()
				drain(c.out)
				return
			}
			h.countSent(len(f.prefix) + len(f.payload))
			if f.reuse {
				select {
				case c.bufs <- f.prefix[:0]:
				default:
				}
			}
			if f.close != 0 {
				_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(f.close, f.reason), time.Now().Add(time.Second))
				if f.close == websocket.CloseGoingAway {
					// The closing handshake (RFC 6455, section 7.1.1): the
					// reader reads on until the trainer's Close, for at most
					// closeWait, before the socket goes. A trainer caught
					// writing an update then reads the reason, not a broken
					// pipe. (Other closes come from the reader, which is not
					// reading any more.)
					select {
					case <-c.readDone:
					case <-time.After(closeWait):
					}
				}
				_ = c.ws.Close()
				drain(c.out)
				return
			}
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeWait)); err != nil {
				_ = c.ws.Close()
				drain(c.out)
				return
			}
		}
	}
}

// write sends one queued frame as one binary message.
func (c *conn) write(f outFrame) error {
	_ = c.ws.SetWriteDeadline(time.Now().Add(writeWait))
	if len(f.payload) == 0 {
		return c.ws.WriteMessage(websocket.BinaryMessage, f.prefix) // unlike NextWriter, allocates nothing
	}
	w, err := c.ws.NextWriter(websocket.BinaryMessage)
	if err != nil {
		return err
	}
	if _, err := w.Write(f.prefix); err != nil {
		return err
	}
	if _, err := w.Write(f.payload); err != nil {
		return err
	}
	return w.Close()
}

// frameBuf returns a buffer for a frame's prefix and header: one the
// writer has finished with, or a new one.
func (c *conn) frameBuf() []byte {
	select {
	case b := <-c.bufs:
		return b
	default:
		return make([]byte, 0, 256)
	}
}

// drain discards the frames queued after the writer stopped, until the
// queue is closed, releasing their buffers.
func drain(ch chan outFrame) {
	for f := range ch {
		f.model.release()
	}
}

func (h *Hub) countSent(n int) {
	h.mu.Lock()
	h.stats.BytesSent += int64(n)
	h.mu.Unlock()
}

func (h *Hub) countReceived(n int) {
	h.mu.Lock()
	h.stats.BytesReceived += int64(n)
	h.mu.Unlock()
}

// pull marks a trainer idle and hands it a task if one is queued.
func (h *Hub) pull(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.dead {
		return
	}
	// A pull while holding a task means the trainer gave it up.
	if t := h.releaseLocked(c); t != nil {
		t.failures++
		h.requeueLocked(h.round, t)
	}
	if !c.idle {
		c.idle = true
		h.idle = append(h.idle, c)
	}
	h.dispatchLocked()
}

// gather folds a trainer's update into the round, exactly once per task.
func (h *Hub) gather(c *conn, u *wire.Update, update []float32, payloadErr error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.task == u.Task {
		c.task = 0
	}
	r := h.round
	if r == nil || r.spec.Round != u.Round || r.closed || u.Task < r.first {
		h.stats.UpdatesStale++
		return
	}
	t := r.task(u.Task)
	if t == nil {
		h.rejectLocked(c, u.Task, fmt.Sprintf("update for task %d, which is not a task of round %d", u.Task, r.spec.Round))
		return
	}
	started, attempted := t.stop(c)
	if t.state == done {
		r.res.Duplicates++
		h.stats.UpdatesDuplicate++
		return
	}
	if t.state == dropped || t.state == unneeded {
		h.stats.UpdatesStale++
		return
	}
	err := payloadErr
	switch {
	case err != nil:
	case t.eval && update != nil:
		err = fmt.Errorf("update for eval task %d carries a tensor; eval results have no payload", u.Task)
	case !t.eval && update == nil:
		err = fmt.Errorf("update for task %d has no tensor payload, want %d float32 values", u.Task, h.cfg.Params)
	case t.eval && (u.Correct < 0 || u.Correct > u.Samples):
		err = fmt.Errorf("eval task %d reports %d correct of %d examples", u.Task, u.Correct, u.Samples)
	case u.Client != t.wire.Client:
		err = fmt.Errorf("update for task %d names client %d, the task is for client %d", u.Task, u.Client, t.wire.Client)
	case u.Version != t.wire.Version:
		err = fmt.Errorf("update for task %d starts from version %d, the task from version %d", u.Task, u.Version, t.wire.Version)
	case u.Samples != t.wire.Rows:
		err = fmt.Errorf("update for task %d reports %d samples, client %d has %d", u.Task, u.Samples, t.wire.Client, t.wire.Rows)
	case !(u.Loss >= 0) || u.Loss > 1e30:
		err = fmt.Errorf("update for task %d reports training loss %v; want a finite non-negative number", u.Task, u.Loss)
	}
	if err == nil && !t.eval {
		err = r.acc.Add(update, int64(t.wire.Rows))
	}
	if err != nil {
		t.failures++
		t.failed(c.name)
		r.res.Failed++
		h.stats.TasksFailed++
		h.rejectLocked(c, u.Task, err.Error())
		h.requeueLocked(r, t)
		return
	}
	t.state = done
	t.correct, t.loss = u.Correct, u.Loss
	r.res.Completed++
	rec := h.trainers[c.name].in(r)
	rec.tasks++
	h.stats.TasksCompleted++
	if !t.eval {
		r.folded++
		processed := int64(u.Samples) * int64(max(t.wire.Epochs, 1))
		rec.total.Tasks++
		rec.total.Samples += processed
		if u.Seconds > 0 && u.Seconds < 1e6 {
			rec.total.Seconds += u.Seconds
			rec.busy.Tasks++
			rec.busy.Samples += processed
			rec.busy.Seconds += u.Seconds
		}
	}
	if attempted {
		h.durations[kind(t.eval)].add(time.Since(started).Seconds())
	}
	if !t.eval && r.folded == r.needed {
		// Over-selection: the remaining training tasks are no longer
		// wanted (eval tasks still are).
		for _, o := range r.order {
			if !o.eval && (o.state == queued || o.state == running) {
				o.state = unneeded
			}
		}
	}
	h.maybeFinishLocked(r)
}

func (h *Hub) rejectLocked(c *conn, taskID int64, msg string) {
	h.stats.UpdatesRejected++
	h.cfg.Logger.Warn("update rejected", "id", c.id, "task", taskID, "err", msg)
	p, err := wire.Prefix(wire.TypeError, wire.Error{Code: "update", Message: msg, Task: taskID})
	if err == nil {
		c.send(outFrame{prefix: p})
	}
}

// trainerError records a trainer's report that it could not do a task.
func (h *Hub) trainerError(c *conn, e *wire.Error) {
	h.cfg.Logger.Warn("trainer reports an error", "id", c.id, "code", e.Code, "task", e.Task, "err", e.Message)
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.task == 0 || (e.Task != 0 && e.Task != c.task) {
		return
	}
	if t := h.releaseLocked(c); t != nil {
		t.failures++
		t.failed(c.name)
		h.round.res.Failed++
		h.stats.TasksFailed++
		h.requeueLocked(h.round, t)
	}
}

// releaseLocked ends c's hold on the task it was last given and returns
// that task if it is one of the running round's, else nil (none, or one of
// an earlier round, whose record may already serve a later task).
func (h *Hub) releaseLocked(c *conn) *task {
	id := c.task
	c.task = 0
	if id == 0 || h.round == nil {
		return nil
	}
	t := h.round.task(id)
	if t != nil {
		t.stop(c)
	}
	return t
}

// drop forgets a disconnected trainer and requeues its task.
func (h *Hub) drop(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.dead = true
	delete(h.conns, c)
	if i := indexOf(h.idle, c); i >= 0 {
		h.idle = append(h.idle[:i], h.idle[i+1:]...)
	}
	if t := h.releaseLocked(c); t != nil {
		t.lost++
		h.requeueLocked(h.round, t)
	}
	h.stats.TrainersLeft++
	h.changedLocked()
}

func indexOf(s []*conn, c *conn) int {
	for i, x := range s {
		if x == c {
			return i
		}
	}
	return -1
}
