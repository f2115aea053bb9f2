-- trustpub registry schema, version 2: pending publishers (additive: one new table).
--
-- A pending publisher is registered for a project that does not exist yet. The first
-- exchange that matches it creates the project and turns it into a normal publisher (a row
-- of `publishers` with the same id), in the same transaction as the token-id claim and the
-- mint record. It expires after a while (30 days by default), and does not reserve the name.
--
-- A sibling table rather than a flag on `publishers`, because:
-- - `publishers` keeps meaning "a live publisher linked to projects": the exchange's
--   candidate query, its indexes and unique key, and "removing a publisher revokes its
--   tokens" stay as they are, and no query can forget a `WHERE NOT pending`;
-- - a pending row has what a normal one lacks (the project name, an expiry, a required
--   registrant), each NOT NULL and checked here;
-- - one identity may be pending for a new project while it is a normal publisher of other
--   projects (as in Warehouse), which a single unique key over both kinds would forbid.

CREATE TABLE pending_publishers (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),  -- kept by the publisher it becomes
    provider        text        NOT NULL,
    issuer          text        NOT NULL,                 -- exact `iss`, as in publishers
    lookup_key      text        NOT NULL,
    -- One identity is pending for one project name at a time (Warehouse's constraint too).
    unique_key      text        NOT NULL UNIQUE,
    spec            jsonb       NOT NULL,
    environment     text        NOT NULL DEFAULT '',
    project_name    text        NOT NULL,                 -- as given; the project it creates
    normalized_name text        NOT NULL,                 -- PEP 503
    registrant      text        NOT NULL,                 -- required: the per-registrant limit counts by it
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,                 -- never matched from then on, purged later
    CONSTRAINT pending_spec_object CHECK (jsonb_typeof(spec) = 'object'),
    CONSTRAINT pending_registrant_nonempty CHECK (registrant <> ''),
    CONSTRAINT pending_name_nonempty CHECK (project_name <> '' AND normalized_name <> ''),
    CONSTRAINT pending_expiry_after_creation CHECK (expires_at > created_at)
);
CREATE INDEX pending_publishers_lookup ON pending_publishers (issuer, lookup_key);
CREATE INDEX pending_publishers_registrant ON pending_publishers (registrant);
CREATE INDEX pending_publishers_expiry ON pending_publishers (expires_at);
CREATE INDEX pending_publishers_name ON pending_publishers (normalized_name);
