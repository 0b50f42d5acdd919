-- Version 7: held items, indexed, for the hold rule's other half. A chat held under a hold that
-- no longer covers it (a feeder moved it away from the held person) goes back to the queue when
-- the daemon re-checks the holds; that check walks the held items only.
CREATE INDEX work_items_held ON work_items (provider, hold_id) WHERE state = 'held';
