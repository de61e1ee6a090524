"""Jobs: specs and states, the JobService (only writer of job state), queue, store and runner."""
