package coord

// Stats are the hub's cumulative counters since it started.
type Stats struct {
	TrainersConnected int
	TrainersJoined    int64
	TrainersLeft      int64

	TasksAssigned  int64 // attempts handed to trainers, re-issues included
	TasksCompleted int64 // tasks whose update was folded: once per task
	TasksFailed    int64 // attempts whose result was rejected or that the trainer gave up
	TasksRequeued  int64 // tasks put back after their trainer left or failed
	TasksReissued  int64 // extra copies of tasks that ran past their deadline
	TasksDropped   int64 // tasks given up after too many failures

	UpdatesDuplicate int64 // updates for tasks already counted, discarded
	UpdatesStale     int64 // updates for a round already closed, discarded
	UpdatesRejected  int64 // updates that failed validation

	ModelsSent    int64
	ShardsSent    int64
	BytesSent     int64
	BytesReceived int64

	Trainers map[string]TrainerStats // by trainer name
}

// TrainerStats are one trainer's figures, across its reconnects.
type TrainerStats struct {
	Tasks   int64   // tasks whose update was counted
	Samples int64   // examples processed in those tasks (n_k·E)
	Seconds float64 // compute seconds the trainer reported for them
}

// SamplesPerSecond is the trainer's measured training throughput.
func (t TrainerStats) SamplesPerSecond() float64 {
	if t.Seconds <= 0 {
		return 0
	}
	return float64(t.Samples) / t.Seconds
}
