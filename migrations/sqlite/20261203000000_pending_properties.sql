-- The user properties an export was requested with, so a run can tell a stale
-- pending export (requested before the cohort's user_id changed) from a bad config.
ALTER TABLE cohorts ADD COLUMN pending_properties TEXT;
