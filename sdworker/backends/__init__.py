"""Other implementations of the job layer's protocols (``sdworker.jobs.protocol``): Redis."""
