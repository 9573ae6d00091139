package job

// State is the job's progress and model as a Report without a round
// result: Round is the number of rounds already completed (non-zero after
// resuming from a checkpoint), Rounds the rounds planned, and Version,
// Accuracy and TestLoss describe the current global model. Call it before
// Run; Run reports every later round to the observers registered with
// Observe.
func (j *Job) State() Report {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return Report{Round: j.next, Rounds: j.cfg.Rounds, Version: j.evaluatedVersion, Accuracy: j.accuracy, TestLoss: j.loss}
}
