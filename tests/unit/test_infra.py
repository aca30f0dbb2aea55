"""The azd templates (azure.yaml, infra/) read as text: no Bicep compiler
exists here, so these tests are what checks them.

What they prove, each against the code rather than a list kept by hand:

* every app setting the code reads (shared/config.py's and shared/sweep.py's names, the ``%TOKEN%``s of each
  function.json) is set on the function app, with the contract's default, and mapped from an azd variable of the same
  name in main.parameters.json;
* every queue the app reads or writes, and the poison queue of each trigger, is created by the storage account, from
  the same variables the app settings use;
* every role definition id is the built-in role its variable and comment name (table below, from Microsoft's docs),
  and the app's identity gets exactly the roles docs/deploy.md justifies;
* azure.yaml, main.bicep, main.parameters.json and the modules agree: parameters passed are declared, required ones
  are passed, outputs used exist, the azd service name is the ``azd-service-name`` tag.

Each check is a function over a ``Sources`` (the texts), so the negative tests feed it a mutated copy and expect it
to fail: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from shared.config import DEFAULTS
from shared.sweep import SWEEP_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
FUNCTIONS = ("delete_customer", "deletion_status", "poll_orders", "sweep_customers")

# Built-in role ids, from learn.microsoft.com/azure/role-based-access-control/built-in-roles (storage, monitor and
# security pages). They are the same in every subscription and tenant.
BUILT_IN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
}
# What the function app's identity must hold, and only that (docs/deploy.md, "Roles"; rbac.bicep's comments).
APP_IDENTITY_ROLES = {
    "Storage Blob Data Owner",
    "Storage Queue Data Contributor",
    "Storage Table Data Contributor",
    "Monitoring Metrics Publisher",
    "Key Vault Secrets User",
}

# Azure Verified Modules, at the versions Microsoft's Flex Consumption azd templates use
# (functions-quickstart-python-azd-timer, -python-azd-otel, -dotnet-azd, fastapi-on-azure-functions), with the outputs
# those templates read from them. The registry itself cannot be reached here, so this is the only check of them.
AVM_MODULES = {
    "br/public:avm/res/managed-identity/user-assigned-identity:0.4.1": {"resourceId", "clientId", "principalId"},
    "br/public:avm/res/web/serverfarm:0.1.1": {"resourceId"},
    "br/public:avm/res/storage/storage-account:0.8.3": {"name"},
    "br/public:avm/res/operational-insights/workspace:0.11.1": {"resourceId"},
    "br/public:avm/res/insights/component:0.6.0": {"name"},
    "br/public:avm/res/network/virtual-network:0.6.1": {"resourceId"},
    "br/public:avm/res/web/site:0.15.1": {"name", "systemAssignedMIPrincipalId"},
}

# Settings the code reads that the template deliberately leaves unset, and why.
NOT_SET_IN_AZURE = {
    "AzureWebJobsStorage": "the connection-string form; the template sets the identity form (AzureWebJobsStorage__*)",
    "PARTNER_CENTER_CLIENT_CERTIFICATE_PATH": "Flex Consumption cannot load certificates; the client secret is used",
    "AZURE_AUTHORITY_HOST": "the storage credential's authority for other clouds; public cloud needs none",
}
# Flex Consumption rejects or ignores these (flex-consumption-plan.md, "deprecated properties and settings").
FLEX_DEPRECATED_SETTINGS = (
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_LOAD_CERTIFICATES",
    "WEBSITE_TIME_ZONE",
)


# ---------------------------------------------------------------------------------------------------------------------
# The texts, and a small reader for the Bicep subset the templates use


@dataclass(frozen=True)
class Sources:
    files: dict[str, str] = field(default_factory=dict)  # path relative to the repo root -> text

    @classmethod
    def load(cls) -> Sources:
        paths = [
            "azure.yaml",
            "infra/main.parameters.json",
            "infra/abbreviations.json",
            "local.settings.example.json",
            "shared/config.py",
            "shared/sweep.py",
            *(f"{f}/function.json" for f in FUNCTIONS),
        ]
        paths += [p.relative_to(ROOT).as_posix() for p in sorted(INFRA.rglob("*.bicep"))]
        paths += [
            p.relative_to(ROOT).as_posix()
            for p in sorted((ROOT / "shared").glob("*.py"))
            if p.name not in ("config.py", "sweep.py")
        ]
        paths += [f"{f}/__init__.py" for f in FUNCTIONS]
        return cls({p: (ROOT / p).read_text(encoding="utf-8") for p in paths})

    def __getitem__(self, path: str) -> str:
        return self.files[path]

    def edit(self, path: str, old: str, new: str, count: int = 1) -> Sources:
        text = self.files[path]
        assert old in text, f"mutation target {old!r} not in {path}"
        return replace(self, files={**self.files, path: text.replace(old, new, count)})

    def bicep(self, path: str) -> Bicep:
        return Bicep(self.files[path])

    def bicep_paths(self) -> list[str]:
        return [p for p in self.files if p.endswith(".bicep")]


def strip_comments(text: str) -> str:
    """Bicep text without // and /* */ comments (strings are kept, quotes escaped with a backslash)."""
    out, i, n, quote = [], 0, len(text), False
    while i < n:
        c = text[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == "'":
                quote = False
        elif c == "'":
            quote = True
            out.append(c)
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def matching_close(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``start`` (strings skipped)."""
    pairs = {"{": "}", "[": "]", "(": ")"}
    stack, i, quote = [], start, False
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == "'":
                quote = False
        elif c == "'":
            quote = True
        elif c in pairs:
            stack.append(pairs[c])
        elif c in ")]}":
            assert stack and stack.pop() == c, f"unbalanced {c!r} at {i}"
            if not stack:
                return i
        i += 1
    raise AssertionError(f"no bracket closes the one at {start}")


def object_entries(body: str) -> dict[str, str]:
    """``key: value`` entries at the top level of an object literal's inside (values as raw text)."""
    entries, depth, quote = {}, 0, False
    buf: list[str] = []

    def flush() -> None:
        item = "".join(buf).strip()
        buf.clear()
        if not item:
            return
        m = re.match(r"('(?:[^'\\]|\\.)*'|[A-Za-z_][\w]*)\s*:\s*(.*)\Z", item, re.S)
        assert m, f"not a key: value entry: {item[:80]!r}"
        key = m.group(1).strip("'")
        assert key not in entries, f"duplicate key {key}"
        entries[key] = m.group(2).strip()

    i = 0
    while i < len(body):
        c = body[i]
        if quote:
            buf.append(c)
            if c == "\\" and i + 1 < len(body):
                buf.append(body[i + 1])
                i += 2
                continue
            if c == "'":
                quote = False
        elif c == "'":
            quote = True
            buf.append(c)
        elif c in "{[(":
            depth += 1
            buf.append(c)
        elif c in "}])":
            depth -= 1
            buf.append(c)
        elif c in "\n," and depth == 0:
            flush()
        else:
            buf.append(c)
        i += 1
    flush()
    return entries


def literal(raw: str | None) -> str | None:
    """The value of a plain single-quoted Bicep string, else None."""
    if raw is None:
        return None
    m = re.fullmatch(r"'((?:[^'\\$]|\\.)*)'", raw.strip())
    return m.group(1).replace("\\'", "'") if m else None


@dataclass
class Param:
    name: str
    type: str
    default: str | None  # raw text
    decorators: str


@dataclass
class Module:
    symbol: str
    source: str
    condition: str | None
    params: dict[str, str]
    body: dict[str, str]


class Bicep:
    def __init__(self, text: str):
        self.raw = text
        self.text = strip_comments(text)

    def _value_at(self, start: int) -> str:
        """The expression starting at ``start``: a bracketed block, else the rest of the line."""
        j = start
        while self.text[j] in " \t":
            j += 1
        if self.text[j] in "{[":
            return self.text[j : matching_close(self.text, j) + 1]
        end = self.text.find("\n", j)
        value = self.text[j:] if end < 0 else self.text[j:end]
        # a ternary or call spanning lines: extend while brackets are open
        k = value.find("(")
        if k >= 0 and value.count("(") > value.count(")"):
            return self.text[j : matching_close(self.text, j + k) + 1]
        return value.strip()

    @property
    def params(self) -> dict[str, Param]:
        result = {}
        for m in re.finditer(r"^((?:@.*\n)*)param (\w+) (\w+)(?:[ \t]*=[ \t]*)?", self.text, re.M):
            default = self._value_at(m.end()) if self.text[m.end() - 1] in "= " and "=" in m.group(0) else None
            result[m.group(2)] = Param(m.group(2), m.group(3), default or None, m.group(1))
        return result

    @property
    def vars(self) -> dict[str, str]:
        return {m.group(1): self._value_at(m.end()) for m in re.finditer(r"^var (\w+)\s*=\s*", self.text, re.M)}

    @property
    def outputs(self) -> dict[str, str]:
        return {m.group(1): self._value_at(m.end()) for m in re.finditer(r"^output (\w+) \w+\s*=\s*", self.text, re.M)}

    @property
    def modules(self) -> dict[str, Module]:
        result = {}
        for m in re.finditer(r"^module (\w+) '([^']+)'\s*=\s*(?:if\s*\((.*?)\)\s*)?\{", self.text, re.M):
            start = m.end() - 1
            body = object_entries(self.text[start + 1 : matching_close(self.text, start)])
            params_raw = body.get("params", "{}")
            assert params_raw.startswith("{"), f"module {m.group(1)}: params is not an object literal"
            params = object_entries(params_raw[1:-1])
            result[m.group(1)] = Module(m.group(1), m.group(2), m.group(3), params, body)
        return result

    def object_var(self, name: str) -> dict[str, str]:
        value = self.vars[name]
        assert value.startswith("{"), f"var {name} is not an object literal"
        return object_entries(value[1:-1])


def local_module_path(caller: str, source: str) -> str | None:
    if source.startswith(("br/", "ts/")):
        return None
    return (Path(caller).parent / source).as_posix().replace("infra/./", "infra/")


def mini_yaml(text: str) -> dict:
    """Enough YAML for azure.yaml: nested mappings of plain scalars, comments, no lists."""
    root: dict = {}
    stack = [(-1, root)]
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        value = value.split(" #")[0].strip()
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value:
            parent[key] = value.strip("'\"")
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))
    return root


# ---------------------------------------------------------------------------------------------------------------------
# What the code says the app needs


def function_bindings(src: Sources) -> dict[str, list[dict]]:
    return {f: json.loads(src[f"{f}/function.json"])["bindings"] for f in FUNCTIONS}


def percent_tokens(src: Sources) -> set[str]:
    tokens = set()
    for bindings in function_bindings(src).values():
        for binding in bindings:
            for value in binding.values():
                if isinstance(value, str):
                    tokens |= set(re.findall(r"%([A-Za-z_][\w]*)%", value))
    return tokens


def trigger_queue_settings(src: Sources) -> set[str]:
    """Settings naming a queue a trigger reads: the host creates ``<queue>-poison`` for each."""
    names = set()
    for bindings in function_bindings(src).values():
        for binding in bindings:
            if binding.get("type") == "queueTrigger":
                m = re.fullmatch(r"%(\w+)%", binding["queueName"])
                assert m, f"queue name {binding['queueName']!r} is not a %SETTING%"
                names.add(m.group(1))
    return names


def settings_read_by_code(src: Sources) -> set[str]:
    names = set(DEFAULTS) | set(SWEEP_DEFAULTS) | percent_tokens(src)
    for path in sorted(p for p in src.files if p.endswith(".py")):  # shared/*.py and each function's __init__.py
        text = src[path]
        names |= set(re.findall(r"\b(?:env|environ|os\.environ)\.get\(\s*\"([A-Za-z_][\w]*)\"", text))
        names |= set(re.findall(r"\bget\(\"([A-Z][A-Z0-9_]*)\"\)", text))
    return names


def poison_queue_settings_in_code(src: Sources) -> set[str]:
    """The settings whose queue the app (shared/config.py) addresses as ``<queue>-poison``."""
    text = src["shared/config.py"]
    fields = set(re.findall(r"self\.(\w+_queue) \+ \"-poison\"", text))
    mapping = dict(re.findall(r"(\w+_queue)=queues\[\"(\w+)\"\]", text))
    assert fields and fields <= set(mapping), "shared/config.py's poison queues are no longer where this test looks"
    return {mapping[f] for f in fields}


def code_default(name: str) -> str | None:
    return DEFAULTS.get(name, SWEEP_DEFAULTS.get(name))


# ---------------------------------------------------------------------------------------------------------------------
# What the template sets


def api_call(src: Sources) -> Module:
    modules = src.bicep("infra/main.bicep").modules
    calls = [m for m in modules.values() if local_module_path("infra/main.bicep", m.source) == "infra/app/api.bicep"]
    assert len(calls) == 1, "main.bicep must call app/api.bicep once"
    return calls[0]


def resolve(main: Bicep, expr: str) -> str:
    """A main.bicep expression with a var name replaced by the var's value (one level, for storageEndpointConfig.x)."""
    m = re.fullmatch(r"(\w+)\.(\w+)", expr)
    if m and m.group(1) in main.vars and main.vars[m.group(1)].startswith("{"):
        return main.object_var(m.group(1))[m.group(2)]
    return main.vars.get(expr, expr)


def app_settings(src: Sources) -> dict[str, str]:
    """Every app setting the function app gets: main.bicep's appSettings, and api.bicep's own (which win)."""
    main, api = src.bicep("infra/main.bicep"), src.bicep("infra/app/api.bicep")
    call = api_call(src)
    passed = resolve(main, call.params["appSettings"])
    assert passed.startswith("{"), "appSettings passed to api.bicep must be an object literal or a var holding one"
    settings = object_entries(passed[1:-1])
    merged = api.vars["allAppSettings"]
    assert merged.startswith("union(") and "appSettings" in merged, "api.bicep must merge the appSettings parameter"
    for name in re.findall(r"\b(\w+Settings)\b", merged):
        if name == "appSettings":
            continue
        value = api.vars[name]
        if value.startswith("{"):
            settings.update(object_entries(value[1:-1]))
            continue
        m = re.fullmatch(r"(\w+)\s*\?\s*\{(.*)\}\s*:\s*\{\s*\}", value, re.S)
        assert m, f"api.bicep var {name} is neither an object nor `flag ? {{...}} : {{}}`"
        flag = resolve(main, call.params.get(m.group(1), api.params[m.group(1)].default or ""))
        if flag.strip() == "true":
            settings.update(object_entries(m.group(2)))
    return settings


def json_parameters(src: Sources) -> dict[str, str]:
    return {k: v["value"] for k, v in json.loads(src["infra/main.parameters.json"])["parameters"].items()}


# ---------------------------------------------------------------------------------------------------------------------
# The checks


def check_app_settings(src: Sources) -> None:
    settings = app_settings(src)
    needed = settings_read_by_code(src) - set(NOT_SET_IN_AZURE)
    missing = sorted(needed - set(settings))
    assert not missing, f"settings the app reads but the template does not set: {missing}"
    assert percent_tokens(src) <= set(settings), "every %TOKEN% of function.json must be an app setting"
    # Identity-based AzureWebJobsStorage, which both the host and shared/config.py read.
    assert literal(settings.get("AzureWebJobsStorage__credential")) == "managedidentity"
    for suffix in ("clientId", "queueServiceUri", "blobServiceUri", "tableServiceUri"):
        assert f"AzureWebJobsStorage__{suffix}" in settings, f"AzureWebJobsStorage__{suffix} is not set"
    for suffix in ("clientId", "queueServiceUri", "tableServiceUri", "credential"):  # what shared/config.py reads
        assert f"AzureWebJobsStorage__{suffix}" in src["shared/config.py"], f"the app no longer reads __{suffix}"
    assert "AzureWebJobsStorage" not in settings, "no connection string: the account has shared keys disabled"
    # Telemetry with Entra authentication, exported by the worker through OpenTelemetry.
    assert settings.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING") == "applicationInsightsIdentity"
    auth = src.bicep("infra/app/api.bicep").vars["applicationInsightsIdentity"]
    assert auth == "'ClientId=${identityClientId};Authorization=AAD'", auth
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings
    assert literal(settings.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY")) == "true"
    # The export is scoped by logger levels (shared.telemetry.quiet_sdk_loggers), not by a logger name, which would
    # drop the SDKs' warnings and errors.
    assert "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME" not in settings
    assert "quiet_sdk_loggers()" in src["shared/app.py"]
    # The worker's default thread pool is enough under make reliability (docs/local-development.md).
    assert "PYTHON_THREADPOOL_THREAD_COUNT" not in settings
    assert settings.get("AZURE_CLIENT_ID") == "identityClientId"
    assert settings.get("AzureWebJobsStorage__clientId") == "identityClientId"
    # The client secret only as a Key Vault reference, resolved with the user-assigned identity.
    assert settings.get("PARTNER_CENTER_CLIENT_SECRET") == "partnerCenterClientSecretReference"
    assert (
        api_call(src).params.get("partnerCenterClientSecretReference")
        == "keyVault.outputs.partnerCenterClientSecretReference"
    )
    reference = src.bicep("infra/app/keyvault.bicep").outputs["partnerCenterClientSecretReference"]
    assert re.fullmatch(r"'@Microsoft\.KeyVault\(VaultName=\$\{vault\.name\};SecretName=\$\{\w+\}\)'", reference), (
        reference
    )
    site = src.bicep("infra/app/api.bicep").modules["api"].params
    assert site.get("keyVaultAccessIdentityResourceId", "").startswith("identityType == 'UserAssigned' ? identityId")
    for path in src.bicep_paths():
        for name in FLEX_DEPRECATED_SETTINGS:
            assert name not in Bicep(src[path]).text, f"{path} sets {name}, which Flex Consumption does not use"


def check_setting_defaults(src: Sources) -> None:
    """Each contract setting comes from a main.bicep parameter with the code's default, and main.parameters.json maps
    it from the azd variable of the same name with the same default."""
    main = src.bicep("infra/main.bicep")
    params, mapped = main.params, json_parameters(src)
    passed = object_entries(resolve(main, api_call(src).params["appSettings"])[1:-1])
    example = json.loads(src["local.settings.example.json"])["Values"]
    for name in sorted(settings_read_by_code(src) - set(NOT_SET_IN_AZURE) - {"PARTNER_CENTER_CLIENT_SECRET"}):
        expr = passed.get(name)
        assert expr, f"{name} is not in the appSettings main.bicep passes"
        expr = main.vars.get(expr, expr)
        m = re.fullmatch(r"(?:toLower\()?(\w+)\)?", expr)
        assert m and m.group(1) in params, f"{name} must come from a main.bicep parameter, not {expr!r}"
        param = params[m.group(1)]
        assert m.group(1) in mapped, f"main.parameters.json does not map {m.group(1)} ({name})"
        env = re.fullmatch(r"\$\{(\w+)(?:=(.*))?\}", mapped[m.group(1)], re.S)
        assert env and env.group(1) == name, (
            f"{m.group(1)} must come from the azd variable {name}, not {mapped[m.group(1)]}"
        )
        default = code_default(name)
        if name == "SWEEP_SCHEDULE":  # no default in code: the contract's example, as in local.settings.example.json
            default = example[name]
        if default is None:  # required (the tenant and client id): no default anywhere
            assert param.default is None and env.group(2) is None, f"{name} has no default in the code, so none here"
            assert "@minLength(1)" in param.decorators, f"{name} must be required (@minLength(1))"
            continue
        assert literal(param.default) == default, f"{m.group(1)} defaults to {param.default}, the code to {default!r}"
        assert env.group(2) == default, (
            f"main.parameters.json's default for {name} is {env.group(2)!r}, not {default!r}"
        )


def check_queues(src: Sources) -> None:
    main = src.bicep("infra/main.bicep")
    passed = object_entries(resolve(main, api_call(src).params["appSettings"])[1:-1])
    queue_settings = {n for n in settings_read_by_code(src) if n.endswith("_QUEUE")}
    triggers = trigger_queue_settings(src)
    assert triggers <= queue_settings
    assert poison_queue_settings_in_code(src) <= triggers, "the app writes a poison queue of a queue no trigger reads"
    created = main.vars["queueNames"]
    assert created.startswith("["), "queueNames must be an array literal"
    created_items = {line.strip() for line in created[1:-1].splitlines() if line.strip()}
    expected = set()
    for name in sorted(queue_settings):
        var = passed.get(name)
        assert var and re.fullmatch(r"\w+", var) and var in main.vars, (
            f"{name} must be set from a var (the queue's name)"
        )
        assert re.fullmatch(r"toLower\(\w+\)", main.vars[var]), (
            f"var {var} must lower-case its parameter, as the host does"
        )
        expected.add(var)
        if name in triggers:
            expected.add(f"'${{{var}}}-poison'")
    assert expected <= created_items, f"queues not created: {sorted(expected - created_items)}"
    storage = main.modules["storage"]
    queues = object_entries(storage.params["queueServices"][1:-1])["queues"]
    assert re.fullmatch(r"\[for (\w+) in queueNames: \{\s*name: \1\s*\}\]", queues), queues
    # The app's table, created from the very parameter DELETION_REQUESTS_TABLE is set from.
    table_param = passed.get("DELETION_REQUESTS_TABLE")
    assert table_param in main.params, "DELETION_REQUESTS_TABLE must be set from a parameter"
    tables = object_entries(storage.params["tableServices"][1:-1])["tables"]
    assert re.fullmatch(rf"\[\s*\{{\s*name: {table_param}\s*\}}\s*\]", tables), tables


def role_vars(src: Sources) -> dict[str, tuple[str, str]]:
    """rbac.bicep's role id variables: var name -> (role named in the comment above it, GUID)."""
    result = {}
    for m in re.finditer(
        r"^// ([A-Z][A-Za-z ]+?)(?: \([^)]*\))?:.*\n(?://.*\n)*var (\w+RoleId) = '([0-9a-f-]{36})'",
        src["infra/app/rbac.bicep"],
        re.M,
    ):
        result[m.group(2)] = (m.group(1), m.group(3))
    return result


def check_roles(src: Sources) -> None:
    roles = role_vars(src)
    assert roles, "no role id variables found in rbac.bicep"
    for var, (role, guid) in roles.items():
        assert role in BUILT_IN_ROLES, f"{var}: {role!r} is not in the table of documented built-in roles"
        assert guid == BUILT_IN_ROLES[role], f"{var}: {guid} is not {role} ({BUILT_IN_ROLES[role]})"
        expected_var = role[0].lower() + role.title().replace(" ", "")[1:] + "RoleId"
        assert var == expected_var, f"{var} holds {role}: name it {expected_var}"
    # No role id anywhere else, and none undeclared.
    guid_re = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    for path in src.bicep_paths():
        found = set(guid_re.findall(Bicep(src[path]).text))
        if path == "infra/app/rbac.bicep":
            assert found == {g for _, g in roles.values()}, "a role id in rbac.bicep outside a commented variable"
        else:
            assert not found, f"{path} has a GUID literal: role ids belong in rbac.bicep"
    # Which principal gets which role.
    rbac = src.bicep("infra/app/rbac.bicep")
    by_principal: dict[str, set[str]] = {}
    conditions: dict[str, str] = {}
    for m in re.finditer(
        r"^resource (\w+) 'Microsoft\.Authorization/roleAssignments@[\w-]+' = (?:if \((.*?)\) )?\{", rbac.text, re.M
    ):
        body = object_entries(rbac.text[m.end() : matching_close(rbac.text, m.end() - 1)])
        props = object_entries(body["properties"][1:-1])
        role_var = re.fullmatch(
            r"resourceId\('Microsoft\.Authorization/roleDefinitions', (\w+)\)", props["roleDefinitionId"]
        )
        assert role_var and role_var.group(1) in roles, f"{m.group(1)}: roleDefinitionId must use a role id variable"
        assert role_var.group(1) in body["name"], f"{m.group(1)}: the assignment's guid() must include its role"
        role = roles[role_var.group(1)][0]
        by_principal.setdefault(props["principalId"], set()).add(role)
        conditions[f"{props['principalId']}:{role}"] = m.group(2) or ""
    main = src.bicep("infra/main.bicep")
    config = main.object_var("storageEndpointConfig")
    call = main.modules["rbac"].params
    assert resolve(main, call["enableTable"]) == "true", (
        "the sweep's first-seen record needs Storage Table Data Contributor"
    )
    assert resolve(main, call["enableQueue"]) == "true" and resolve(main, call["enableBlob"]) == "true"

    def assigned(role: str) -> bool:  # unconditional, or under an enable flag main.bicep sets true
        condition = conditions[f"managedIdentityPrincipalId:{role}"]
        if not condition:
            return True
        assert re.fullmatch(r"enable(Blob|Queue|Table)", condition), f"the app's {role} depends on {condition!r}"
        return resolve(main, call[condition]) == "true"

    app_roles = {r for r in by_principal["managedIdentityPrincipalId"] if assigned(r)}
    assert app_roles == APP_IDENTITY_ROLES, f"the app's identity gets {sorted(app_roles)}"
    assert call["managedIdentityPrincipalId"] == "apiUserAssignedIdentity.outputs.principalId"
    assert config["enableTable"] == "true"
    table_comment = src["infra/app/rbac.bicep"].split("var storageTableDataContributorRoleId")[0].rsplit("var ", 1)[-1]
    assert "first-seen record" in table_comment and "not used" not in table_comment, "the table role's reason"
    user_roles = by_principal.get("userIdentityPrincipalId", set())
    assert user_roles <= {"Storage Queue Data Contributor", "Key Vault Secrets Officer"}, sorted(user_roles)
    for role in user_roles:
        assert "assignToUser" in conditions[f"userIdentityPrincipalId:{role}"], f"deployer's {role} must be optional"


def check_consistency(src: Sources) -> None:
    main = src.bicep("infra/main.bicep")
    # main.parameters.json <-> main.bicep
    declared, mapped = main.params, json_parameters(src)
    assert not set(mapped) - set(declared), (
        f"main.parameters.json maps undeclared params: {sorted(set(mapped) - set(declared))}"
    )
    required = {n for n, p in declared.items() if p.default is None}
    assert required <= set(mapped), f"required params not in main.parameters.json: {sorted(required - set(mapped))}"
    assert mapped["environmentName"] == "${AZURE_ENV_NAME}" and mapped["location"] == "${AZURE_LOCATION}"
    # Modules: passed params declared, required params passed, outputs used exist.
    for caller in src.bicep_paths():
        bicep = src.bicep(caller)
        for module in bicep.modules.values():
            path = local_module_path(caller, module.source)
            if path is None:
                assert module.source in AVM_MODULES, (
                    f"{caller}: {module.source} is not a version Microsoft's templates use"
                )
                continue
            assert path in src.files, f"{caller}: module {module.source} does not exist"
            target = src.bicep(path)
            extra = set(module.params) - set(target.params)
            assert not extra, f"{caller} passes {sorted(extra)} to {path}, which does not declare them"
            needed = {n for n, p in target.params.items() if p.default is None}
            assert needed <= set(module.params), (
                f"{caller} does not pass {sorted(needed - set(module.params))} to {path}"
            )
        for symbol, out in re.findall(r"\b(\w+)\.outputs\.\??(\w+)", bicep.text):
            used = bicep.modules.get(symbol)
            assert used, f"{caller}: {symbol}.outputs.{out} names no module"
            path = local_module_path(caller, used.source)
            available = AVM_MODULES[used.source] if path is None else set(src.bicep(path).outputs)
            assert out in available, f"{caller}: {symbol}.outputs.{out} does not exist"
    # abbreviations
    abbrs = json.loads(src["infra/abbreviations.json"])
    for key in re.findall(r"\babbrs\.(\w+)", main.text):
        assert key in abbrs, f"abbreviations.json has no {key}"
    # azure.yaml <-> the azd-service-name tag
    services = mini_yaml(src["azure.yaml"])["services"]
    assert len(services) == 1, "one service: the function app"
    ((service_name, service),) = services.items()
    assert service == {"project": ".", "language": "python", "host": "function"}, service
    api = src.bicep("infra/app/api.bicep")
    assert "serviceName" not in api_call(src).params, "main.bicep must not override api.bicep's serviceName"
    assert literal(api.params["serviceName"].default) == service_name, (
        "azure.yaml's service is not api.bicep's serviceName"
    )
    site = api.modules["api"].params
    assert "'azd-service-name': serviceName" in site["tags"], "the function app lacks the azd-service-name tag"
    # Flex Consumption, as Microsoft's templates build it.
    plan = main.modules["appServicePlan"].params
    assert object_entries(plan["sku"][1:-1]) == {"name": "'FC1'", "tier": "'FlexConsumption'"}
    config = object_entries(site["functionAppConfig"][1:-1])
    runtime = object_entries(config["runtime"][1:-1])
    assert runtime == {"name": "runtimeName", "version": "runtimeVersion"}
    assert literal(api_call(src).params["runtimeName"]) == "python"
    version = main.params[api_call(src).params["runtimeVersion"]]
    assert literal(version.default) == "3.11", "3.11 by default (see main.bicep)"
    allowed = re.search(r"@allowed\(\[(.*?)\]\)", version.decorators)
    assert allowed and set(re.findall(r"'([\d.]+)'", allowed.group(1))) == {"3.11", "3.12", "3.13"}, (
        "Functions supports 3.11-3.13"
    )
    scale = object_entries(config["scaleAndConcurrency"][1:-1])
    assert set(scale) == {"instanceMemoryMB", "maximumInstanceCount"}
    storage = object_entries(object_entries(config["deployment"][1:-1])["storage"][1:-1])
    assert literal(storage["type"]) == "blobContainer"
    assert "UserAssignedIdentity" in object_entries(storage["authentication"][1:-1])["type"]
    account = main.modules["storage"].params
    assert account["allowSharedKeyAccess"] == "false"
    assert "deploymentStorageContainerName" in account["blobServices"]
    assert main.modules["monitoring"].params["disableLocalAuth"] == "true"
    assert "workspaceResourceId" in main.modules["monitoring"].params
    # Optional VNet, with private endpoints for blob and queue.
    assert re.fullmatch(r"\$\{VNET_ENABLED=(true|false)\}", mapped["vnetEnabled"]), mapped["vnetEnabled"]
    for symbol in ("serviceVirtualNetwork", "storagePrivateEndpoint"):
        assert main.modules[symbol].condition == "vnetEnabled", f"{symbol} must exist only with vnetEnabled"
    pe = main.modules["storagePrivateEndpoint"].params
    assert resolve(main, pe["enableBlob"]) == "true" and resolve(main, pe["enableQueue"]) == "true"
    assert resolve(main, pe["enableTable"]) == "true", "the table needs its private endpoint when the VNet is on"
    # ... and the module makes one for the table service: the endpoint, its DNS zone and the zone group, under
    # enableTable.
    pe_text = src.bicep("infra/app/storage-PrivateEndpoint.bicep").text
    table_pe = re.search(
        r"resource (\w+) 'Microsoft\.Network/privateEndpoints@[\w-]+' = if \(enableTable\) \{(.*?)\n\}", pe_text, re.S
    )
    assert table_pe and re.search(r"groupIds: \[\s*'table'\s*\]", table_pe.group(2)), "no private endpoint for tables"
    zone = re.search(
        r"resource (\w+) 'Microsoft\.Network/privateDnsZones@[\w-]+' = if \(enableTable\) \{\s*name: (\w+)", pe_text
    )
    assert zone and "privatelink.table." in pe_text, "no privatelink.table DNS zone"
    assert re.search(
        rf"privateDnsZoneGroups@[\w-]+' = if \(enableTable\) \{{\s*parent: {table_pe.group(1)}.*?privateDnsZoneId: "
        rf"{zone.group(1)}\.id",
        pe_text,
        re.S,
    ), "the table endpoint's DNS zone group"
    vault = src.bicep("infra/app/keyvault.bicep").text
    assert "enableRbacAuthorization: true" in vault and "publicNetworkAccess: 'Enabled'" in vault
    assert re.search(
        r"resource \w+ 'Microsoft\.KeyVault/vaults/secrets@[\w-]+' = if \(!empty\(partnerCenterClientSecret\)\)", vault
    )
    assert "@secure()" in main.params["partnerCenterClientSecret"].decorators
    assert "@secure()" in src.bicep("infra/app/keyvault.bicep").params["partnerCenterClientSecret"].decorators


CHECKS: dict[str, Callable[[Sources], None]] = {
    "app_settings": check_app_settings,
    "setting_defaults": check_setting_defaults,
    "queues": check_queues,
    "roles": check_roles,
    "consistency": check_consistency,
}


@pytest.fixture(scope="module")
def sources() -> Sources:
    return Sources.load()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_templates_pass(sources: Sources, name: str) -> None:
    CHECKS[name](sources)


# (check, file, text, replacement): each one a break the check must notice.
MUTATIONS = [
    ("app_settings", "infra/main.bicep", "  SWEEP_SCHEDULE: sweepSchedule\n", ""),
    ("app_settings", "infra/main.bicep", "  PROTECTED_CUSTOMER_IDS: protectedCustomerIds\n", ""),
    ("app_settings", "infra/main.bicep", "enableQueue: true  //", "enableQueue: false  //"),
    ("app_settings", "infra/app/api.bicep", "  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'\n", ""),
    (
        "app_settings",
        "infra/app/api.bicep",
        "  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'\n",
        (
            "  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'\n"
            "  PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: 'customer_deletion'\n"
        ),
    ),
    (
        "app_settings",
        "infra/app/api.bicep",
        "  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'\n",
        "  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'\n  PYTHON_THREADPOOL_THREAD_COUNT: '24'\n",
    ),
    ("app_settings", "infra/app/api.bicep", "Authorization=AAD'", "Authorization=Key'"),
    (
        "app_settings",
        "infra/app/api.bicep",
        "  AZURE_CLIENT_ID: identityClientId\n",
        "  FUNCTIONS_WORKER_RUNTIME: 'python'\n",
    ),
    (
        "app_settings",
        "infra/app/api.bicep",
        "AzureWebJobsStorage__credential: 'managedidentity'",
        "AzureWebJobsStorage__credential: 'none'",
    ),
    (
        "app_settings",
        "infra/app/api.bicep",
        "    keyVaultAccessIdentityResourceId: identityType == 'UserAssigned' ? identityId : ''\n",
        "",
    ),
    ("app_settings", "sweep_customers/function.json", "%SWEEP_SCHEDULE%", "%SWEEP_CRON%"),
    ("app_settings", "shared/config.py", 'env.get("PARTNER_CENTER_TENANT_ID"', 'env.get("PARTNER_CENTER_NEW_SETTING"'),
    ("app_settings", "delete_customer/__init__.py", "\n", '\nX = os.environ.get("SOME_NEW_SETTING")\n'),
    (
        "setting_defaults",
        "infra/main.bicep",
        "param pollIntervalSeconds string = '30'",
        "param pollIntervalSeconds string = '60'",
    ),
    ("setting_defaults", "infra/main.parameters.json", "${SWEEP_MAX_PER_RUN=25}", "${SWEEP_MAX_PER_RUN=50}"),
    ("setting_defaults", "infra/main.parameters.json", "${SWEEP_MODE=report}", "${SWEEP_MODUS=report}"),
    (
        "setting_defaults",
        "infra/main.bicep",
        "param sweepSchedule string = '0 0 3 * * *'",
        "param sweepSchedule string = '0 0 4 * * *'",
    ),
    ("setting_defaults", "infra/main.bicep", "@minLength(1)\n@description('Tenant", "@description('Tenant"),
    ("setting_defaults", "infra/main.bicep", "  SWEEP_MODE: sweepMode\n", "  SWEEP_MODE: 'delete'\n"),
    ("queues", "infra/main.bicep", "  '${pollQueueName}-poison'\n", ""),
    ("queues", "infra/main.bicep", "  sweepReportsQueueName\n]", "]"),
    (
        "queues",
        "infra/main.bicep",
        "var outcomesQueueName = toLower(deletionOutcomesQueue)",
        "var outcomesQueueName = deletionOutcomesQueue",
    ),
    (
        "queues",
        "infra/main.bicep",
        "queues: [for queueName in queueNames: {\n        name: queueName",
        "queues: [for queueName in queueNames: {\n        name: 'x'",
    ),
    (
        "queues",
        "infra/main.bicep",
        "  DELETE_CUSTOMER_QUEUE: deleteQueueName\n",
        "  DELETE_CUSTOMER_QUEUE: 'customer-deletions'\n",
    ),
    (
        "roles",
        "infra/app/rbac.bicep",
        "var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'",
        "var storageQueueDataContributorRoleId = '19e7f393-937e-4f77-808e-94535e297925'",
    ),
    ("roles", "infra/app/rbac.bicep", "// Key Vault Secrets User: read", "// Key Vault Secrets Officer: read"),
    ("roles", "infra/app/rbac.bicep", "var monitoringMetricsPublisherRoleId =", "var metricsRoleId ="),
    ("roles", "infra/main.bicep", "enableTable: true  //", "enableTable: false  //"),
    ("roles", "infra/app/rbac.bicep", "rows of its first-seen record", "rows (not used)"),
    (
        "app_settings",
        "infra/main.bicep",
        "    enableTable: storageEndpointConfig.enableTable\n    deploymentStorageContainerName",
        "    enableTable: false\n    deploymentStorageContainerName",
    ),
    ("consistency", "infra/app/storage-PrivateEndpoint.bicep", "            'table'\n", "            'queue'\n"),
    (
        "consistency",
        "infra/app/storage-PrivateEndpoint.bicep",
        "resource tablePrivateEndpoint 'Microsoft.Network/privateEndpoints@2021-08-01' = if (enableTable) {",
        "resource tablePrivateEndpoint 'Microsoft.Network/privateEndpoints@2021-08-01' = if (false) {",
    ),
    ("queues", "infra/main.bicep", "          name: deletionRequestsTable\n", "          name: 'deletionrequests'\n"),
    ("app_settings", "infra/main.bicep", "  DELETION_REQUESTS_TABLE: deletionRequestsTable\n", ""),
    (
        "setting_defaults",
        "infra/main.bicep",
        "param sweepMinAgeHours string = '24'",
        "param sweepMinAgeHours string = '48'",
    ),
    (
        "consistency",
        "infra/main.bicep",
        "    enableTable: storageEndpointConfig.enableTable\n  }\n}\n\n// Monitor",
        "    enableTable: false\n  }\n}\n\n// Monitor",
    ),
    (
        "roles",
        "infra/app/rbac.bicep",
        "resource appInsightsRoleAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {",
        "resource appInsightsRoleAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (false) {",
    ),
    (
        "roles",
        "infra/app/rbac.bicep",
        (
            "resource keyVaultSecretsOfficerRoleAssignment_User 'Microsoft.Authorization/roleAssignments@2022-04-01' "
            "= if (assignToUser) {"
        ),
        "resource keyVaultSecretsOfficerRoleAssignment_User 'Microsoft.Authorization/roleAssignments@2022-04-01' = {",
    ),
    ("consistency", "azure.yaml", "  api:\n", "  app:\n"),
    ("consistency", "azure.yaml", "project: .", "project: ./src"),
    ("consistency", "infra/main.parameters.json", '"sweepMode": {', '"sweepModus": {'),
    (
        "consistency",
        "infra/main.bicep",
        "    instanceMemoryMB: instanceMemoryMB\n    appSettings",
        "    instanceMemory: instanceMemoryMB\n    appSettings",
    ),
    (
        "consistency",
        "infra/main.bicep",
        "    partnerCenterClientSecretReference: keyVault.outputs.partnerCenterClientSecretReference\n",
        "",
    ),
    (
        "consistency",
        "infra/main.bicep",
        "output SERVICE_API_NAME string = api.outputs.SERVICE_API_NAME",
        "output SERVICE_API_NAME string = api.outputs.SERVICE_NAME",
    ),
    (
        "consistency",
        "infra/main.bicep",
        "'br/public:avm/res/web/serverfarm:0.1.1'",
        "'br/public:avm/res/web/serverfarm:0.4.0'",
    ),
    ("consistency", "infra/main.bicep", "name: 'FC1'", "name: 'Y1'"),
    ("consistency", "infra/main.bicep", "allowSharedKeyAccess: false", "allowSharedKeyAccess: true"),
    ("consistency", "infra/main.bicep", "param pythonVersion string = '3.11'", "param pythonVersion string = '3.12'"),
    (
        "consistency",
        "infra/main.bicep",
        "@allowed(['3.11', '3.12', '3.13'])",
        "@allowed(['3.10', '3.11', '3.12', '3.13'])",
    ),
    (
        "consistency",
        "infra/main.bicep",
        "'${abbrs.keyVaultVaults}${resourceToken}'",
        "'${abbrs.keyVaults}${resourceToken}'",
    ),
    ("consistency", "infra/app/api.bicep", "tags: union(tags, { 'azd-service-name': serviceName })", "tags: tags"),
    (
        "consistency",
        "infra/main.bicep",
        "module storagePrivateEndpoint 'app/storage-PrivateEndpoint.bicep' = if (vnetEnabled) {",
        "module storagePrivateEndpoint 'app/storage-PrivateEndpoint.bicep' = {",
    ),
    ("consistency", "infra/main.bicep", "disableLocalAuth: true", "disableLocalAuth: false"),
    ("consistency", "infra/main.bicep", "@secure()\n@description('Client secret", "@description('Client secret"),
    ("consistency", "infra/main.parameters.json", "${VNET_ENABLED=false}", "${VNET_ENABLED}"),
]


@pytest.mark.parametrize("check,path,old,new", MUTATIONS, ids=[f"{m[0]}:{m[1]}:{i}" for i, m in enumerate(MUTATIONS)])
def test_each_check_catches_a_break(sources: Sources, check: str, path: str, old: str, new: str) -> None:
    broken = sources.edit(path, old, new)
    with pytest.raises(AssertionError):
        CHECKS[check](broken)


def test_the_reader_handles_what_the_templates_use() -> None:
    text = strip_comments("var a = { // c\n  k: 'v//x' /* y */\n  'q-r': [1, 2]\n  n: f(1,\n 2)\n}\n")
    assert object_entries(Bicep(text).vars["a"][1:-1]) == {"k": "'v//x'", "q-r": "[1, 2]", "n": "f(1,\n 2)"}
    params = Bicep("@secure()\nparam s string = ''\nparam r string\nparam o object = {\n  a: 1\n}\n").params
    assert params["s"].default == "''" and "@secure()" in params["s"].decorators
    assert params["r"].default is None and params["o"].default == "{\n  a: 1\n}"
    assert mini_yaml("name: x\nservices:\n  api:\n    project: .  # here\n") == {
        "name": "x",
        "services": {"api": {"project": "."}},
    }
