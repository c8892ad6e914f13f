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
import re
import sys
import urllib.parse

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
    "host_from_token_response:instance_url": "salesforce_instance_url",
    "callback_param:realmId": "quickbooks_realm_id",
}
# Quirks that name the host of the user's API, by the entry's name.
API_DOMAIN_QUIRK = {"pipedrive": "pipedrive_api_domain", "zoho": "zoho_api_domain"}
PLACEHOLDER_FORMS = ["{api_key}", "{access_token}", "{base64(username:password)}",
                     "{base64(api_key:)}", "{base64(username:api_key)}", "{token}"]
# Records whose host is the customer's own server.
SELF_MANAGED = {"jira-data-center", "canvas-lms", "woocommerce", "gitlab-pat"}
PKCE = {"required", "supported", "unsupported", "opt_in", "unknown"}


def log(name, message):
    print(f"{name}: {message}", file=sys.stderr)


def metadata_header(record):
    """The metadata call's authorization as the record's notes state it
    ("Authorization: OAuth {token}"), else a bearer token."""
    m = re.search(r"Authorization: ([A-Za-z]+) \{token\}", record.get("notes") or "")
    return f"{m.group(1)} {{token}}" if m else "Bearer {token}"


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


class Skip(Exception):
    """A record the catalog cannot hold as it is (the reason is printed)."""


def snake(text):
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", text).lower()


def snake_placeholders(value, renames):
    """Connection-parameter names are [a-z0-9_]: rename camelCase ones
    everywhere they appear."""
    if isinstance(value, str):
        for old, new in renames.items():
            value = value.replace("{" + old + "}", "{" + new + "}")
        return value
    if isinstance(value, list):
        return [snake_placeholders(v, renames) for v in value]
    if isinstance(value, dict):
        return {k: snake_placeholders(v, renames) for k, v in value.items()}
    return value


def basic_fields(name, credential, fields, notes):
    """Basic entries: the credentials API takes a username and a password;
    the record's fields are mapped by their place in `A:B` of the format."""
    fmt = (credential or {}).get("format") or ""
    m = re.search(r"base64\(([^:)]*):([^)]*)\)", fmt)
    if not m:
        raise Skip(f"basic credential format {fmt!r} has no base64(user:password)")
    by_name = {f["name"]: f for f in fields}
    out = []
    for part, role in ((m.group(1), "username"), (m.group(2), "password")):
        field = by_name.get(part)
        prefix = next((f for n, f in by_name.items() if part.startswith(n) and part != n), None)
        if field is not None:
            out.append({**field, "name": role})
        elif prefix is not None:
            shape = part.replace(prefix["name"], "{" + prefix["name"] + "}", 1)
            out.append({**prefix, "name": role,
                        "help": f"Enter it as {shape}." + (f" {prefix['help']}" if prefix.get("help") else "")})
        elif part == "":
            out.append({"name": role, "label": role.capitalize(), "secret": role == "password",
                        "help": "Leave empty.", "help_url": None})
        else:
            out.append({"name": role, "label": role.capitalize(), "secret": False,
                        "help": f"Enter {part} (the provider expects this fixed value).",
                        "help_url": None})
    used = lambda n: any(part == n or part.startswith(n) for part in (m.group(1), m.group(2)))
    unused = [f["name"] for f in fields if not used(f["name"])]
    if unused:
        log(name, f"api_key_fields {unused} are not part of the Basic pair; dropped")
        notes.append(f"Also needed: {', '.join(unused)} (not stamped by the service).")
    return out


def intercom_hosts(record):
    """Host fragments cannot be empty or end in a dot: Intercom's optional
    region prefix becomes one whole-host parameter per host family."""
    text = json.dumps(record)
    text = text.replace("app.{region}intercom.com", "{app_host}").replace("api.{region}intercom.io", "{api_host}")
    record = json.loads(text)
    record["connection_params"] = [
        {"name": "app_host", "pattern": "^app\\.(eu\\.|au\\.)?intercom\\.com$", "default": "app.intercom.com",
         "description": "Intercom web host of the workspace's region: app.intercom.com (US), app.eu.intercom.com, app.au.intercom.com"},
        {"name": "api_host", "pattern": "^api\\.(eu\\.|au\\.)?intercom\\.io$", "default": "api.intercom.io",
         "description": "Intercom API host of the same region: api.intercom.io (US), api.eu.intercom.io, api.au.intercom.io"},
    ]
    return record


# Record-specific reshaping the schema needs (the facts stay the same).
RESHAPE = {"intercom": intercom_hosts}


def convert(record):
    name = record["name"]
    if name in RESHAPE:
        record = RESHAPE[name](record)
        log(name, "reshaped for the schema (see RESHAPE)")
    if not record.get("docs_url"):
        raise Skip("no docs_url")
    renames = {p["name"]: snake(p["name"]) for p in record.get("connection_params") or []
               if snake(p["name"]) != p["name"]}
    if renames:
        log(name, f"connection params renamed {renames}")
        record = snake_placeholders(record, renames)
        for p in record["connection_params"]:
            p["name"] = renames.get(p["name"], p["name"])
    if "#" in (record.get("authorize_url") or ""):
        raise Skip("hash-routed authorize_url")
    hosts = record.get("api_hosts") or []
    if name in SELF_MANAGED:
        raise Skip("self-managed host: any host is an app-level override, not a connection parameter")
    derived = {"instance_host", "realm_id", "api_domain_host"}
    kept = [p for p in record.get("connection_params") or [] if p.get("name") not in derived]
    if len(kept) != len(record.get("connection_params") or []):
        log(name, "connection params that the token response fills are not connection params; dropped")
        record["connection_params"] = kept
        if name.startswith("salesforce"):
            record.setdefault("token_response_quirks", []).append("salesforce_instance_url")
    metadata = record.get("post_exchange_metadata")
    if metadata and (not re.fullmatch(r"[A-Za-z0-9_]+", metadata.get("field", ""))
                     or any(p["name"] == metadata.get("fills") for p in kept)):
        log(name, "post_exchange_metadata reads a nested field; the app supplies its value instead")
        record["notes"] = (record.get("notes") or "") + f" The app supplies {metadata.get('fills')} (from {metadata.get('url')}, field {metadata.get('field')})."
        record["post_exchange_metadata"] = None
    if not (record.get("refresh") or {}).get("supported") and (record.get("refresh_url") or (record.get("token_request_params") or {}).get("refresh")):
        log(name, "refresh_url and refresh params without refresh support; dropped")
        record["notes"] = (record.get("notes") or "") + f" Token renewal ({record.get('refresh_url')}, {json.dumps((record.get('token_request_params') or {}).get('refresh'))}) is not a refresh_token grant; not done by the service."
        record["refresh_url"] = None
        record.setdefault("token_request_params", {})["refresh"] = {}
    if not record.get("api_base_url") and len(hosts) == 1:
        record["api_base_url"] = "https://" + hosts[0]
        record.setdefault("unverified", []).append("api_base_url")
        log(name, "api_base_url made from its one api host (unverified)")
    for p in record.get("connection_params") or []:
        # "common (default; ...)", "default: x", "defaults to x": the record
        # names the default in words only.
        m = re.search(r"([A-Za-z0-9._-]+) \((?:[^)]*, )?default|default:? ([A-Za-z0-9._-]+)|defaults to ([A-Za-z0-9._-]+)",
                      p.get("description") or "")
        if m and p.get("default") is None:
            value = next(g for g in m.groups() if g)
            if re.fullmatch(p["pattern"].lstrip("^").rstrip("$"), value):
                p["default"] = value
                log(name, f"connection param {p['name']} default {value!r} from its description")
    credential = record.get("credential") or {}
    if credential.get("in") not in (None, "header", "query"):
        raise Skip(f"credential in {credential.get('in')!r} cannot be stamped")
    notes = [record.get("notes", "").strip()]
    auth_type = record.get("auth_type", "oauth2")
    oauth = auth_type in ("oauth2", "oauth2_client_credentials")
    extra = {k: str(v) for k, v in (record.get("extra_authorize_params") or {}).items()}
    authorize_url = record.get("authorize_url")
    if authorize_url and "?" in authorize_url:
        authorize_url, _, query = authorize_url.partition("?")
        for k, v in urllib.parse.parse_qsl(query):
            extra.setdefault(k, v)
        log(name, "authorize_url query moved to extra_authorize_params")
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
            "header_format": metadata.get("header_format") or metadata_header(record),
            "field": metadata["field"],
            "fills": metadata["fills"],
        }
    separator = record.get("scope_separator") or " "
    if separator not in (" ", ","):
        log(name, f"scope separator {separator!r} -> ' '")
    if separator not in (" ", ","):
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
    if auth_type == "basic":
        fields = basic_fields(name, credential, fields, notes)
    elif auth_type == "api_key":
        keys = [f for f in fields if f["secret"]] or fields
        if not keys:
            fields = [{"name": "api_key", "label": "API key", "secret": True,
                       "help": None, "help_url": None}]
        else:
            dropped = [f["name"] for f in fields if f is not keys[0]]
            if dropped:
                log(name, f"api_key_fields {dropped}: only one key is stamped; dropped")
                notes.append(f"Also needed: {', '.join(dropped)} (not stamped by the service).")
            fields = [{**keys[0], "name": "api_key"}]
    else:
        fields = []
    entry = {
        "name": name,
        "display_name": record["display_name"],
        "category": record.get("category") or "other",
        "docs_url": record["docs_url"],
        "auth_type": auth_type,
        "authorize_url": authorize_url if auth_type == "oauth2" else None,
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
    notes += entry.pop("_notes", [])
    entry["notes"] = " ".join(n for n in notes if n)
    return {k: entry[k] for k in FIELDS}


def rename(key):
    key = key.split("[")[0]
    head, _, tail = key.partition(".")
    head = RENAMED.get(head, head)
    # Sub-keys of list fields (connection_params.pattern) are the field.
    if tail and head in ("api_key_fields", "connection_params", "api_hosts", "header",
                         "default_scopes", "token_response_quirks"):
        return head
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
        insecure = [s for s in clean if s.startswith("http://")]
        if insecure:
            log(name, f"{key}: non-https sources dropped {insecure}")
            clean = [s for s in clean if s not in insecure]
        if clean:
            refs.setdefault(key, [])
            refs[key] += [s for s in clean if s not in refs[key]]
    unverified = []
    for key in record.get("unverified") or []:
        # "field (why)" and "field[1].x": the field; the why goes to notes.
        key, _, why = key.partition(" (")
        if why:
            entry.setdefault("_notes", []).append(f"Unverified {key}: {why.rstrip(')')}.")
        key = rename(key.split("[")[0])
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
    done = 0
    for path in paths:
        record = json.loads(path.read_text())
        try:
            write(convert(record))
            done += 1
        except Skip as why:
            log(record.get("name", path.stem), f"SKIPPED: {why}")
    print(f"converted {done} of {len(paths)} records into {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
