-- trustpub registry schema, version 1.
--
-- Provider-specific fields of a publisher live in `publishers.spec` (JSON); the columns
-- are what every provider has and what lookups need. Later additions (GitLab, Google and
-- ActiveState publishers; pending publishers with expiry and a per-registrant limit;
-- per-publisher allowed refs and token lifetime) are new rows, new spec fields, new
-- nullable columns or new tables: none of them has to rewrite these.

CREATE TABLE projects (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text        NOT NULL,                 -- as given
    normalized_name text        NOT NULL UNIQUE,          -- PEP 503: re.sub(r"[-_.]+", "-", name).lower()
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text        NOT NULL DEFAULT '',
    CONSTRAINT projects_name_nonempty CHECK (name <> '' AND normalized_name <> '')
);

CREATE TABLE publishers (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    provider    text        NOT NULL,                     -- github, gitlab, google, activestate
    issuer      text        NOT NULL,                     -- exact `iss`: a publisher matches only its issuer's tokens
    lookup_key  text        NOT NULL,                     -- provider-defined candidate key, e.g. lower("owner/repo")
    unique_key  text        NOT NULL UNIQUE,              -- provider-defined identity: two rows never mean the same publisher
    spec        jsonb       NOT NULL,                     -- the provider's registered fields
    environment text        NOT NULL DEFAULT '',          -- '' = any environment
    registrant  text        NOT NULL DEFAULT '',          -- who registered it (operator, later a project owner)
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT publishers_spec_object CHECK (jsonb_typeof(spec) = 'object')
);
CREATE INDEX publishers_lookup ON publishers (issuer, lookup_key);
CREATE INDEX publishers_registrant ON publishers (registrant);

-- Many to many, as in Warehouse: one publisher row serves every project that registered
-- the same identity; a minted token covers all of them.
CREATE TABLE publisher_projects (
    publisher_id uuid NOT NULL REFERENCES publishers (id) ON DELETE CASCADE,
    project_id   uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (publisher_id, project_id)
);
CREATE INDEX publisher_projects_project ON publisher_projects (project_id);

-- The replay store: one row per exchanged OIDC token, kept until at least
-- exp + leeway + margin (TOB-PYPI26-1). The primary key is what makes a token single-use.
CREATE TABLE used_tokens (
    issuer     text        NOT NULL,
    token_key  text        NOT NULL,                      -- jti, or sha256:<hex> of the signing input
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, token_key)
);
CREATE INDEX used_tokens_expiry ON used_tokens (expires_at);

-- One row per minted token. publisher_id has no foreign key on purpose: the record (and
-- its audit trail) outlives a removed publisher, and introspection reports tokens of a
-- removed publisher as revoked.
CREATE TABLE mints (
    id             uuid        PRIMARY KEY,
    exchange_id    text        NOT NULL DEFAULT '',
    publisher_id   uuid        NOT NULL,
    issuer         text        NOT NULL,
    token_key      text        NOT NULL,
    projects       text[]      NOT NULL,
    provenance     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    issued_at      timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX mints_publisher ON mints (publisher_id);
CREATE INDEX mints_expiry ON mints (expires_at);

-- The audit trail. event_id makes every insert idempotent (events are redelivered).
-- Never a raw token: detail may hold token_hash_prefix (first 16 hex of sha256).
CREATE TABLE audit_events (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    at           timestamptz NOT NULL DEFAULT now(),
    kind         text        NOT NULL,                    -- exchange.succeeded, exchange.failed, publisher.created, ...
    exchange_id  text        NOT NULL DEFAULT '',
    publisher_id uuid,
    mint_id      uuid,
    outcome      text        NOT NULL DEFAULT '',
    code         text        NOT NULL DEFAULT '',
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_kind_at ON audit_events (kind, at);
CREATE INDEX audit_events_publisher ON audit_events (publisher_id) WHERE publisher_id IS NOT NULL;
CREATE INDEX audit_events_mint ON audit_events (mint_id) WHERE mint_id IS NOT NULL;
CREATE INDEX audit_events_exchange ON audit_events (exchange_id) WHERE exchange_id <> '';
