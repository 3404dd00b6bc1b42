-- A subscription's own message template, carried with each delivery it plans.
ALTER TABLE deliveries ADD COLUMN template TEXT;
