-- Delivery of a mint record (DESIGN.md, "Exactly once, as the publisher sees it").
--
-- The registry commits a grant before the minter signs and the gateway answers, so a stage
-- failing after the commit used to spend the publisher's OIDC token for nothing. Now a mint
-- record is leased to the exchange that committed it until that exchange's deadline. Once that
-- exchange's gateway released it (it answered without delivering), or the lease ended and a
-- grace passed with no word from the gateway, a presentation of the same OIDC token gets a
-- token of this same record again, until a gateway reports that one was delivered. Delivered,
-- the record is single use for good: any later presentation is refused as a reused token.
ALTER TABLE mints
    ADD COLUMN delivered_at        timestamptz,
    ADD COLUMN released_at         timestamptz,
    ADD COLUMN attempts            integer     NOT NULL DEFAULT 1,
    ADD COLUMN attempt_exchange_id text        NOT NULL DEFAULT '',
    ADD COLUMN lease_until         timestamptz NOT NULL DEFAULT now();

-- A gateway that answered an exchange without delivering releases its attempt by exchange id.
CREATE INDEX mints_undelivered_attempt ON mints (attempt_exchange_id) WHERE delivered_at IS NULL;

-- Records from before this migration were answered by then: treat them as delivered.
UPDATE mints SET delivered_at = issued_at, attempt_exchange_id = exchange_id;

-- One mint record per OIDC token, whatever the code above it does.
CREATE UNIQUE INDEX mints_token ON mints (issuer, token_key);
