"""The torch-free vocabulary shared by the API, the job layer and the engine: what a job asks for
(``GenerationRequest``), what a worker serves, the checks every door makes, A1111 names and texts."""
