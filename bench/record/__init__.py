"""Record benchmark: creates against raw MongoDB inserts; reads and searches at 100,000
stored resources; where a call's time goes; the record process's peak memory."""
