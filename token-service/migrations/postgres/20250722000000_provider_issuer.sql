-- The provider's issuer identifier (RFC 9207, postgres; keep in step with the
-- other backend): when set, an authorization response must carry exactly
-- this `iss`. NULL: not checked.
ALTER TABLE providers ADD COLUMN issuer TEXT NULL;
