package coord

// EvalShardsForTest exposes the hub's test shards to the package's tests.
func (h *Hub) EvalShardsForTest() []Shard { return h.cfg.EvalShards }
