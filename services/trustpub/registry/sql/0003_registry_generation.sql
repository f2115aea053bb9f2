-- A counter that moves whenever anything a match reads changes: publishers, pending
-- publishers, the projects they are linked to. The registry keeps the candidates of recent
-- identities in memory and records an exchange in one statement that claims the token id only
-- while the counter still has the value those candidates were read at; when it has moved, the
-- statement writes nothing and the registry reads the candidates again (match.py). So a cached
-- candidate never outlives a change, and the hot path is one round trip.
CREATE TABLE registry_generation (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    n  bigint  NOT NULL
);
INSERT INTO registry_generation (n) VALUES (1);

CREATE FUNCTION bump_registry_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_generation SET n = n + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER publishers_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON publishers
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_generation();
CREATE TRIGGER pending_publishers_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pending_publishers
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_generation();
CREATE TRIGGER publisher_projects_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON publisher_projects
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_generation();
CREATE TRIGGER projects_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_generation();
