"""Other implementations of the queue, store and bus protocols (e.g. Redis), behind the same protocols."""
