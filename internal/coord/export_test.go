package coord

// EvalShardsForTest exposes the hub's test shards to the package's tests.
func (h *Hub) EvalShardsForTest() []Shard { return h.cfg.EvalShards }

// FreeUpdateBuffersForTest reports how many update buffers no reader holds.
func (h *Hub) FreeUpdateBuffersForTest() int { return len(h.updates) }
