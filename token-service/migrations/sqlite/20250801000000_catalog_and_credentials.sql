-- Provider catalog, credential types and connection parameters (keep the
-- sqlite and postgres files in step).
-- providers.catalog: the catalog entry the configuration was made from (NULL:
-- custom); auth_type: oauth2 | oauth2_client_credentials | api_key | basic;
-- settings: JSON of the remaining provider fields (api_hosts, revocation,
-- PKCE, extra authorize parameters, connection parameter declarations,
-- token-response quirk, issuer, where the credential is stamped).
ALTER TABLE providers ADD COLUMN catalog TEXT NULL;
ALTER TABLE providers ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
ALTER TABLE providers ADD COLUMN auth_type TEXT NOT NULL DEFAULT 'oauth2';
ALTER TABLE providers ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
-- Connection parameter values (JSON object), from the connect session to the
-- connection: they fill the placeholders of the provider's URLs and hosts.
ALTER TABLE connect_sessions ADD COLUMN params TEXT NOT NULL DEFAULT '{}';
ALTER TABLE oauth_states ADD COLUMN params TEXT NOT NULL DEFAULT '{}';
ALTER TABLE connections ADD COLUMN params TEXT NOT NULL DEFAULT '{}';
