"""The API key: which environment variables may hold one, reading it, and blanking it out of every text.

A shared workflow chooses both `url` and `api_key_env`, so the name is checked before anything is read: it
must look like an API-key variable, must not be a well-known credential of another service (cloud, code
hosting, model hubs), and must not be a key pasted in place of a name. A refused input is never echoed.
The value is stripped of surrounding whitespace (a trailing CR/LF from a .env file would otherwise end up in
requests' InvalidHeader message) and refused, unshown, if it still holds characters a header cannot carry.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

KEY_NAME = re.compile(r"^[A-Z][A-Z0-9_]*(_API_KEY|_KEY|_TOKEN)$")
MAX_NAME_CHARS = 64
ALLOW_VAR = "CONDUIT_MLLM_KEY_VARS"  # set in ComfyUI's environment: comma-separated names, the only ones allowed
# Credentials of other services that match KEY_NAME but must never go to a workflow-chosen URL.
NOT_FOR_MLLM_PREFIXES = ("AWS_", "AZURE_CLIENT_", "AZURE_STORAGE_", "GOOGLE_APPLICATION_", "GCP_", "GCLOUD_",
                         "GITHUB_", "GH_", "GITLAB_", "GL_", "BITBUCKET_", "HF_", "HUGGING_FACE_", "HUGGINGFACE_",
                         "CIVITAI_", "NPM_", "PYPI_", "TWINE_", "DOCKER_", "SSH_", "GPG_", "CI_", "ACTIONS_",
                         "RUNNER_", "CODECOV_", "CLOUDFLARE_", "DIGITALOCEAN_", "HEROKU_", "VERCEL_", "NETLIFY_",
                         "SLACK_", "DISCORD_", "TELEGRAM_", "STRIPE_", "TWILIO_", "SENTRY_", "KAGGLE_", "WANDB_",
                         "DATABRICKS_", "SNOWFLAKE_", "VAULT_", "KUBE", "K8S_")
NOT_FOR_MLLM_WORDS = ("SECRET", "PASSWORD", "PASSWD", "PRIVATE", "SESSION", "SIGNING", "ENCRYPTION")
REDACTED = "***"
EXAMPLE = "OPENAI_API_KEY"


class KeyRefused(ValueError):
    """api_key_env is not acceptable; the message never contains the input itself."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem)


class KeyUnavailable(ValueError):
    """The named variable is unset or unusable in this environment (a stage failure, not a workflow error)."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem)


@dataclass(frozen=True, repr=False)
class Secret:
    """The key as read (raw, for redaction) and as sent (stripped); repr never shows either."""
    name: str
    value: str
    raw: str

    def __repr__(self) -> str:
        return f"Secret({self.name}={REDACTED})"

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def _allowlist(environ: Mapping[str, str]) -> set[str] | None:
    text = environ.get(ALLOW_VAR, "").strip()
    return {n for n in re.split(r"[,\s]+", text) if n} if text else None


def check_key_name(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The variable name to read, or "" for no key; KeyRefused (without echoing the input) otherwise."""
    environ = os.environ if environ is None else environ
    name = name.strip()
    if not name:
        return ""
    must = (f"api_key_env must name an environment variable such as {EXAMPLE} (capital letters, digits and _, "
            "ending in _API_KEY, _KEY or _TOKEN)")
    fix = (f"put the variable's name (e.g. {EXAMPLE}) in api_key_env and the key itself in ComfyUI's environment; "
           "never paste the key into the workflow.")
    if any(name in (v, v.strip()) for v in environ.values()):
        raise KeyRefused(f"{must}; the value given is the value of an environment variable, so it is not shown.",
                         fix)
    if len(name) > MAX_NAME_CHARS or not KEY_NAME.match(name):
        raise KeyRefused(f"{must}; the value given is not such a name, so it is not shown.", fix)
    allowed = _allowlist(environ)
    if allowed is not None:
        if name not in allowed:
            raise KeyRefused(f"api_key_env {name} is not in {ALLOW_VAR}, the list of variables this ComfyUI allows.",
                             f"add {name} to {ALLOW_VAR} in ComfyUI's environment, or use a listed variable.")
        return name
    if name.startswith(NOT_FOR_MLLM_PREFIXES) or any(w in name for w in NOT_FOR_MLLM_WORDS):
        raise KeyRefused(f"api_key_env {name} is a credential of another service, not an MLLM API key, and is "
                         "never sent to a workflow's url.",
                         f"use the MLLM provider's own key variable, or list {name} in {ALLOW_VAR} in ComfyUI's "
                         "environment if it really is one.")
    return name


def read_key(name: str, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The key behind a checked name; KeyUnavailable when unset or unusable (the value is never shown)."""
    environ = os.environ if environ is None else environ
    if not name:
        return None
    raw = environ.get(name, "")
    value = raw.strip()
    if not value:
        raise KeyUnavailable(f"environment variable {name} (api_key_env) is not set.",
                             f"set {name} in ComfyUI's environment, or clear api_key_env for servers without keys.")
    if any(not (" " <= ch <= "~") for ch in value):
        raise KeyUnavailable(f"environment variable {name} holds characters an HTTP header cannot carry (control "
                             "or non-ASCII characters); its value is not shown.",
                             f"set {name} to the key alone, on one line.")
    return Secret(name, value, raw)


def _forms(secret: str) -> set[str]:
    """Every way the key may show up in a text: as read, stripped, escaped by repr/JSON, percent-encoded."""
    out: set[str] = set()
    for s in {secret, secret.strip()}:
        if not s:
            continue
        out |= {s, repr(s)[1:-1], json.dumps(s)[1:-1], quote(s, safe="")}
    return {f for f in out if f}


class Redactor:
    """Replaces every form of the given secrets with ***; applied to every text the planner lets out."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for s in secrets:
            if s:
                forms |= _forms(s)
        self._forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __call__(self, text: str) -> str:
        text = str(text)
        for f in self._forms:
            if f in text:
                text = text.replace(f, REDACTED)
        return text

    def value(self, obj: Any) -> Any:
        """Redact every string inside a JSON-like value (the stage results)."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, dict):
            return {k: self.value(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.value(v) for v in obj)
        return obj


def redactor_for(secret: Secret | None) -> Redactor:
    return Redactor([secret.raw, secret.value] if secret else [])
