-- FIFO dequeue (queue-and-events.md §6.1) reads pending rows by priority, then id: an index in
-- that order spares it a sort of every pending row on each claim.
CREATE INDEX idx_session_queue_fifo ON session_queue(status, priority DESC, item_id);
