#!/usr/bin/env python3
"""Converts provider research records (one JSON file per provider, the
format of the catalog research notes) into catalog entries,
token-service/providers/<name>.json, in the schema that
token-service/src/catalog.rs validates.

    scripts/catalog-import.py RECORDS_DIR [NAME ...]

Without names every record is converted. Facts are carried over as they are;
the converter only renames fields (credential -> header), maps response
quirks to the catalog's codes, and makes the bookkeeping consistent: a field
neither referenced nor listed unverified becomes unverified, and a group
whose sub-keys are split between referenced and unverified is split into
its sub-keys. Everything it changes is printed.
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "token-service" / "providers"

FIELDS = [
    "name", "display_name", "category", "docs_url", "auth_type",
    "authorize_url", "token_url", "refresh_url", "token_request_params",
    "revocation", "api_base_url", "api_hosts", "scope_separator",
    "default_scopes", "client_auth", "pkce", "extra_authorize_params",
    "connection_params", "token_response_quirks", "post_exchange_metadata",
    "header", "api_key_fields", "refresh", "references", "unverified", "notes",
]
SELF_DESCRIBING = {"name", "display_name", "category", "references", "unverified", "notes"}
SUB_KEYS = {
    "refresh": ["supported", "rotation", "access_token_lifetime",
                "refresh_token_idle_expiry", "non_expiring_access_tokens"],
    "revocation": ["url", "method", "style", "client_auth", "token"],
    "token_request_params": ["exchange", "refresh", "client_credentials"],
    "post_exchange_metadata": ["url", "header_format", "field", "fills"],
}
RENAMED = {"credential": "header"}
QUIRKS = {
    "token_nested:authed_user": "slack_authed_user",
    "slack_authed_user": "slack_authed_user",
    "error_with_http_200": "error_in_200",
    "error_in_200": "error_in_200",
    "scope_as_array": "scope_as_array",
    "expires_in_string": "expires_in_string",
    "metadata:stripe_user_id": "stripe_connect_account",
    "stripe_connect_account": "stripe_connect_account",
    "salesforce_instance_url": "salesforce_instance_url",
    "instance_url": "salesforce_instance_url",
    "metadata:instance_url": "salesforce_instance_url",
    "quickbooks_realm_id": "quickbooks_realm_id",
    "realm_id_in_redirect": "quickbooks_realm_id",
    "pipedrive_api_domain": "pipedrive_api_domain",
    "zoho_api_domain": "zoho_api_domain",
    "granted_scopes_in_redirect": "granted_scopes_in_redirect",
}
# Quirks that name the host of the user's API, by the entry's name.
API_DOMAIN_QUIRK = {"pipedrive": "pipedrive_api_domain", "zoho": "zoho_api_domain"}
PLACEHOLDER_FORMS = ["{api_key}", "{access_token}", "{base64(username:password)}",
                     "{base64(api_key:)}", "{base64(username:api_key)}", "{token}"]
PKCE = {"required", "supported", "unsupported", "opt_in", "unknown"}


def log(name, message):
    print(f"{name}: {message}", file=sys.stderr)


def header_of(credential, auth_type):
    credential = credential or {}
    where = credential.get("in", "header")
    name = str(credential.get("name", "authorization"))
    fmt = str(credential.get("format") or "{token}")
    for form in PLACEHOLDER_FORMS:
        fmt = fmt.replace(form, "{token}")
    if "{token}" not in fmt:
        fmt = "{token}" if where == "query" else "Bearer {token}"
    header = {"name": name.lower() if where == "header" else name, "format": fmt}
    if where == "query":
        header["in"] = "query"
        header["format"] = "{token}"
    return header


def quirks_of(name, raw, notes):
    out = []
    for q in raw or []:
        code = QUIRKS.get(q)
        if code is None and "api_domain" in q and name in API_DOMAIN_QUIRK:
            code = API_DOMAIN_QUIRK[name]
        if code is None:
            log(name, f"response quirk {q!r} has no catalog code; kept in notes")
            notes.append(f"Token response: {q}.")
            continue
        if code not in out:
            out.append(code)
    return out


def convert(record):
    name = record["name"]
    notes = [record.get("notes", "").strip()]
    auth_type = record.get("auth_type", "oauth2")
    oauth = auth_type in ("oauth2", "oauth2_client_credentials")
    extra = {k: str(v) for k, v in (record.get("extra_authorize_params") or {}).items()}
    if "response_type" in extra:
        log(name, "dropped extra_authorize_params.response_type (the service sends it)")
        del extra["response_type"]
    params = record.get("token_request_params") or {}
    token_params = {k: {pk: str(pv) for pk, pv in (params.get(k) or {}).items()}
                    for k in SUB_KEYS["token_request_params"]}
    revocation = record.get("revocation")
    if revocation:
        revocation = {
            "url": revocation["url"],
            "method": str(revocation.get("method") or "POST").upper(),
            "style": revocation.get("style") or "provider_specific",
            "client_auth": revocation.get("client_auth") or record.get("client_auth") or "body",
            "token": revocation.get("token") or "refresh",
        }
    metadata = record.get("post_exchange_metadata")
    if metadata:
        metadata = {
            "url": metadata["url"],
            "header_format": metadata.get("header_format") or "Bearer {token}",
            "field": metadata["field"],
            "fills": metadata["fills"],
        }
    separator = record.get("scope_separator") or " "
    if separator == "+":
        separator = " "
    pkce = record.get("pkce") or "unknown"
    if pkce not in PKCE:
        log(name, f"pkce {pkce!r} -> unknown")
        pkce = "unknown"
    fields = []
    for f in record.get("api_key_fields") or []:
        field = {"name": f["name"], "label": f.get("label") or f["name"],
                 "secret": bool(f.get("secret", False))}
        field["help"] = f.get("help")
        field["help_url"] = f.get("help_url")
        fields.append(field)
    entry = {
        "name": name,
        "display_name": record["display_name"],
        "category": record.get("category") or "other",
        "docs_url": record["docs_url"],
        "auth_type": auth_type,
        "authorize_url": record.get("authorize_url") if auth_type == "oauth2" else None,
        "token_url": record.get("token_url") if oauth else None,
        "refresh_url": record.get("refresh_url") if oauth else None,
        "token_request_params": token_params,
        "revocation": revocation if oauth else None,
        "api_base_url": record.get("api_base_url"),
        "api_hosts": [h.lower() for h in record.get("api_hosts") or []],
        "scope_separator": separator,
        "default_scopes": list(record.get("default_scopes") or []),
        "client_auth": record.get("client_auth") or "body",
        "pkce": pkce,
        "extra_authorize_params": extra,
        "connection_params": [
            {k: p[k] for k in ("name", "description", "pattern", "default") if p.get(k) is not None}
            for p in record.get("connection_params") or []
        ],
        "token_response_quirks": quirks_of(name, record.get("token_response_quirks"), notes),
        "post_exchange_metadata": metadata if oauth else None,
        "header": header_of(record.get("credential") or record.get("header"), auth_type),
        "api_key_fields": fields,
        "refresh": {k: (record.get("refresh") or {}).get(k) for k in SUB_KEYS["refresh"]},
    }
    r = entry["refresh"]
    for k in ("supported", "rotation", "non_expiring_access_tokens"):
        r[k] = bool(r[k])
    if not oauth:
        r["supported"] = False
        r["rotation"] = False
    entry["references"], entry["unverified"] = bookkeeping(name, entry, record)
    entry["notes"] = " ".join(n for n in notes if n)
    return {k: entry[k] for k in FIELDS}


def rename(key):
    head, _, tail = key.partition(".")
    head = RENAMED.get(head, head)
    return head if not tail else f"{head}.{tail}"


def sub_keys(entry, field):
    if field == "extra_authorize_params":
        return list(entry["extra_authorize_params"])
    if field in ("revocation", "post_exchange_metadata") and entry[field] is None:
        return []
    return SUB_KEYS.get(field, [])


def bookkeeping(name, entry, record):
    refs = {}
    for key, sources in (record.get("references") or {}).items():
        key = rename(key)
        head = key.split(".")[0]
        if head not in FIELDS or ("." in key and key.split(".", 1)[1] not in sub_keys(entry, head)):
            log(name, f"reference key {key!r} names no catalog field; dropped")
            continue
        clean = [s.strip() for s in sources if isinstance(s, str) and s.strip()]
        if clean:
            refs.setdefault(key, [])
            refs[key] += [s for s in clean if s not in refs[key]]
    unverified = []
    for key in record.get("unverified") or []:
        key = rename(key)
        head = key.split(".")[0]
        if head not in FIELDS:
            log(name, f"unverified key {key!r} names no catalog field; dropped")
            continue
        if key in refs:
            log(name, f"{key} both referenced and unverified: kept unverified")
            del refs[key]
        if key not in unverified:
            unverified.append(key)
    # Split groups whose parts disagree.
    for field in FIELDS:
        parts = sub_keys(entry, field)
        if not parts:
            continue
        dotted = [f"{field}.{p}" for p in parts]
        if field in refs and any(d in unverified for d in dotted):
            sources = refs.pop(field)
            for d in dotted:
                if d not in unverified:
                    refs.setdefault(d, list(sources))
        if field in unverified and any(d in refs for d in dotted):
            unverified.remove(field)
            for d in dotted:
                if d not in refs and d not in unverified:
                    unverified.append(d)
    covered = lambda k: k in refs or k in unverified
    for field in FIELDS:
        if field in SELF_DESCRIBING or covered(field):
            continue
        parts = sub_keys(entry, field)
        if parts and all(covered(f"{field}.{p}") for p in parts):
            continue
        if parts and any(covered(f"{field}.{p}") for p in parts):
            for p in parts:
                if not covered(f"{field}.{p}"):
                    unverified.append(f"{field}.{p}")
            continue
        unverified.append(field)
    return dict(sorted(refs.items())), unverified


def write(entry):
    path = OUT / f"{entry['name']}.json"
    path.write_text(json.dumps(entry, indent=2, ensure_ascii=False) + "\n")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    records = pathlib.Path(sys.argv[1])
    names = sys.argv[2:]
    paths = [records / f"{n}.json" for n in names] if names else sorted(records.glob("*.json"))
    for path in paths:
        record = json.loads(path.read_text())
        write(convert(record))
    print(f"converted {len(paths)} records into {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
