-- The kind of work a request asks for (horde_core::JobKind::NAME: "image"; text generation and
-- interrogation to come). Every coordinator loads the requests of each kind into that kind's
-- queue; requests stored before kinds existed are images.
ALTER TABLE requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'image';
