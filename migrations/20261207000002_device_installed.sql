-- The artifacts each device's last state report said it holds (space-separated SHA-256
-- digests). Canary places go first to devices holding the target; a restarted controller
-- must know them before devices report again, and an assignment row forgets what its device
-- served as soon as the assignment changes.
ALTER TABLE devices ADD COLUMN installed_sha256 TEXT NOT NULL DEFAULT '';
