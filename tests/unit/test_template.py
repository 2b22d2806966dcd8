"""Static checks of template.yaml: the promises its header makes are kept.

The template is read with cfn-lint's CloudFormation-aware YAML loader, so short-form intrinsics
(!Ref, !Sub, !GetAtt, !If, ...) come back as their long form ({"Ref": ...}, {"Fn::Sub": ...}).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from image_pipeline.settings import DEFAULTS

cfn_yaml = pytest.importorskip("cfnlint.decode.cfn_yaml")

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
POWERTOOLS = {
    "POWERTOOLS_SERVICE_NAME": "image-pipeline",
    "POWERTOOLS_METRICS_NAMESPACE": "ImagePipeline",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}
S3_OBJECT_ACTIONS_ALLOWED = {
    # action -> the only key prefixes it may be granted on
    "s3:GetObject": {"raw/", "processed/"},
    "s3:GetObjectTagging": {"raw/"},
    "s3:PutObjectTagging": {"raw/"},
    "s3:DeleteObject": {"raw/"},
    "s3:PutObject": {"processed/"},
}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn_yaml.load(str(TEMPLATE_PATH))


def resources_of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == type_}


def only(mapping: dict[str, Any], what: str) -> tuple[str, Any]:
    assert len(mapping) == 1, f"expected exactly one {what}, found {sorted(mapping)}"
    return next(iter(mapping.items()))


@pytest.fixture(scope="module")
def function(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name, res = only(resources_of_type(template, "AWS::Serverless::Function"), "AWS::Serverless::Function")
    return name, res["Properties"]


@pytest.fixture(scope="module")
def bucket(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name, res = only(resources_of_type(template, "AWS::S3::Bucket"), "AWS::S3::Bucket")
    return name, res["Properties"]


def resolve(template: dict[str, Any], value: Any) -> str:
    """A literal, or a !Ref to a parameter (its Default), as the string Lambda would see."""
    if isinstance(value, dict):
        assert set(value) == {"Ref"}, f"cannot resolve {value!r} statically"
        param = template["Parameters"].get(value["Ref"])
        assert param is not None, f"!Ref {value['Ref']} is not a template parameter"
        assert "Default" in param, f"parameter {value['Ref']} has no Default"
        value = param["Default"]
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def branches(value: Any) -> Iterator[Any]:
    """Every value a (possibly !If-wrapped) item can take; AWS::NoValue yields nothing."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _condition, if_true, if_false = value["Fn::If"]
        yield from branches(if_true)
        yield from branches(if_false)
    elif isinstance(value, dict) and value == {"Ref": "AWS::NoValue"}:
        return
    else:
        yield value


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def arn_text(resource: Any) -> str:
    """An IAM Resource entry as text: '${Bucket.Arn}/raw/*', '${Bucket.Arn}', '*' ..."""
    if isinstance(resource, str):
        return resource
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        sub = resource["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        target = resource["Fn::GetAtt"]
        target = target.split(".") if isinstance(target, str) else target
        return "${" + ".".join(target) + "}"
    if isinstance(resource, dict) and "Ref" in resource:
        return "${" + resource["Ref"] + "}"
    raise AssertionError(f"unrecognised IAM Resource {resource!r}")


def iam_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Allow/Deny statement the template grants to a principal of its own (all branches)."""
    documents: list[Any] = []
    for res in template["Resources"].values():
        props = res.get("Properties", {})
        if res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
            documents.append(props["PolicyDocument"])
        elif res["Type"] == "AWS::IAM::Role":
            documents.extend(p["PolicyDocument"] for p in props.get("Policies", []))
        elif res["Type"] == "AWS::Serverless::Function":
            for policy in as_list(props.get("Policies", [])):
                for p in branches(policy):
                    if isinstance(p, dict) and "Statement" in p:
                        documents.append(p)
                    else:
                        # SAM policy templates (S3CrudPolicy ...) and managed policy names grant
                        # more than this test can see: do not allow them for S3 at all.
                        assert "S3" not in str(p), f"SAM policy {p!r} grants S3 access outside the checked statements"
    statements = []
    for doc in documents:
        for item in as_list(doc["Statement"]):
            statements.extend(branches(item))
    return statements


def s3_grants(template: dict[str, Any]) -> list[tuple[str, str]]:
    """(action, resource text) for every S3 action allowed by the template's own IAM policies."""
    grants = []
    for st in iam_statements(template):
        if st.get("Effect") != "Allow":
            continue
        for action in as_list(st["Action"]):
            if action == "*" or action.lower().startswith("s3:"):
                for resource in as_list(st["Resource"]):
                    grants.append((action, arn_text(resource)))
    return grants


# ---------------------------------------------------------------- function


def test_runtime_architecture_and_code(function: tuple[str, dict[str, Any]]) -> None:
    _, props = function
    assert props["Runtime"] in ("python3.12", "python3.13")
    assert props["Architectures"] == ["arm64"]
    assert props["CodeUri"].rstrip("/") == "handler"
    assert (ROOT / "handler" / "requirements.txt").is_file()


def test_handler_points_at_the_lambda_entry_point(function: tuple[str, dict[str, Any]]) -> None:
    _, props = function
    assert props["Handler"] == "image_pipeline.handler.lambda_handler"
    module, _, attribute = props["Handler"].rpartition(".")
    module_file = ROOT / props["CodeUri"] / Path(*module.split(".")).with_suffix(".py")
    assert module_file.is_file(), f"{module_file} (handler module) does not exist"
    assert f"def {attribute}(" in module_file.read_text(encoding="utf-8")


def test_sizing(template: dict[str, Any], function: tuple[str, dict[str, Any]]) -> None:
    _, props = function
    assert props["MemorySize"] == {"Ref": "MemorySize"}
    assert resolve(template, props["MemorySize"]) == "1024"
    assert props["Timeout"] == 120
    assert props["Tracing"] == "Active"
    # Reserved concurrency is a parameter (possibly behind an "unset" condition).
    reserved = list(branches(props["ReservedConcurrentExecutions"]))
    assert reserved and all(r == {"Ref": "ReservedConcurrency"} for r in reserved)
    assert "ReservedConcurrency" in template["Parameters"]


def test_environment_matches_settings_defaults(template: dict[str, Any], function: tuple[str, dict[str, Any]]) -> None:
    _, props = function
    variables = props["Environment"]["Variables"]
    assert set(variables) == set(DEFAULTS) | set(POWERTOOLS)
    for name, default in DEFAULTS.items():
        assert resolve(template, variables[name]) == default, name
    for name, value in POWERTOOLS.items():
        assert variables[name] == value, name


@pytest.mark.parametrize("name", ["VARIANTS", "RAW_DISPOSITION", "MAX_PIXELS", "MAX_INPUT_BYTES"])
def test_user_facing_settings_are_parameters(function: tuple[str, dict[str, Any]], name: str) -> None:
    _, props = function
    value = props["Environment"]["Variables"][name]
    assert isinstance(value, dict) and "Ref" in value, f"{name} should be a template parameter"


def test_raw_disposition_parameter_only_allows_known_values(template: dict[str, Any], function: tuple[str, dict[str, Any]]) -> None:
    _, props = function
    param = template["Parameters"][props["Environment"]["Variables"]["RAW_DISPOSITION"]["Ref"]]
    assert set(param["AllowedValues"]) == {"tag", "delete"}


# ---------------------------------------------------------------- bucket and trigger


def test_bucket_is_private_and_encrypted(bucket: tuple[str, dict[str, Any]]) -> None:
    _, props = bucket
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules and all(r["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms") for r in rules)
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


def test_bucket_policy_denies_plain_http(template: dict[str, Any], bucket: tuple[str, dict[str, Any]]) -> None:
    bucket_name, _ = bucket
    _, policy = only(resources_of_type(template, "AWS::S3::BucketPolicy"), "AWS::S3::BucketPolicy")
    assert policy["Properties"]["Bucket"] == {"Ref": bucket_name}
    denies = [
        st
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
        if st["Effect"] == "Deny" and st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
    ]
    assert denies, "no statement denies requests without TLS"


def test_only_raw_prefix_triggers_the_function(bucket: tuple[str, dict[str, Any]], function: tuple[str, dict[str, Any]]) -> None:
    bucket_name, _ = bucket
    _, props = function
    s3_events = [e["Properties"] for e in props["Events"].values() if e["Type"] == "S3"]
    assert len(s3_events) == 1
    (event,) = s3_events
    assert event["Bucket"] == {"Ref": bucket_name}
    assert as_list(event["Events"]) == ["s3:ObjectCreated:*"]
    rules = event["Filter"]["S3Key"]["Rules"]
    assert [(r["Name"].lower(), r["Value"]) for r in rules] == [("prefix", "raw/")]
    env = props["Environment"]["Variables"]
    assert env["RAW_PREFIX"] == "raw/" == DEFAULTS["RAW_PREFIX"]
    # Outputs must not re-trigger the pipeline.
    assert not env["PROCESSED_PREFIX"].startswith(env["RAW_PREFIX"])


def test_raw_expiry_lifecycle_rule_is_optional_and_only_hits_processed_raw(template: dict[str, Any], bucket: tuple[str, dict[str, Any]]) -> None:
    _, props = bucket
    assert template["Parameters"]["RawRetentionDays"]["Default"] == 0
    expiring = []
    for item in props["LifecycleConfiguration"]["Rules"]:
        if isinstance(item, dict) and "Fn::If" in item:
            condition, if_true, if_false = item["Fn::If"]
            assert if_false == {"Ref": "AWS::NoValue"}
            assert template["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "RawRetentionDays"}, "0"]}]}
            expiring.append(if_true)
        else:
            assert "ExpirationInDays" not in item and "ExpirationDate" not in item, f"unconditional expiry {item!r}"
    assert len(expiring) == 1
    (rule,) = expiring
    assert rule["Prefix"] == "raw/"
    assert rule["TagFilters"] == [{"Key": "image-pipeline-status", "Value": "processed"}]
    assert rule["ExpirationInDays"] == {"Ref": "RawRetentionDays"}


# ---------------------------------------------------------------- IAM


def test_no_wildcard_s3_permissions(template: dict[str, Any]) -> None:
    grants = s3_grants(template)
    assert grants, "no S3 permissions found at all"
    for action, resource in grants:
        assert action not in ("*", "s3:*") and "*" not in action, f"wildcard action {action}"
        assert resource != "*", f"{action} granted on Resource '*'"
        assert resource.startswith("${") or resource.startswith("arn:"), resource


def test_object_actions_are_confined_to_their_prefix(template: dict[str, Any], bucket: tuple[str, dict[str, Any]]) -> None:
    bucket_name, _ = bucket
    granted: dict[str, set[str]] = {}
    for action, resource in s3_grants(template):
        if action == "s3:ListBucket":
            assert resource == "${" + bucket_name + ".Arn}", f"ListBucket on {resource}"
            continue
        assert action in S3_OBJECT_ACTIONS_ALLOWED, f"unexpected S3 action {action}"
        prefix = resource.removeprefix("${" + bucket_name + ".Arn}/")
        assert prefix != resource, f"{action} on {resource}, which is not inside the pipeline bucket"
        assert prefix.endswith("/*"), f"{action} on {resource}"
        granted.setdefault(action, set()).add(prefix.removesuffix("*"))
    for action, prefixes in granted.items():
        assert prefixes <= S3_OBJECT_ACTIONS_ALLOWED[action], f"{action} granted on {prefixes}"
    # And what the handler needs is actually there.
    assert granted.get("s3:PutObject") == {"processed/"}
    assert granted.get("s3:DeleteObject") == {"raw/"}
    assert {"raw/", "processed/"} <= granted.get("s3:GetObject", set())
    assert granted.get("s3:GetObjectTagging") == {"raw/"}
    assert granted.get("s3:PutObjectTagging") == {"raw/"}


def test_missing_keys_read_as_404_not_403(template: dict[str, Any], bucket: tuple[str, dict[str, Any]]) -> None:
    """Without s3:ListBucket, S3 answers AccessDenied for a missing key: the handler's "no manifest
    yet" (every new image) and "raw object gone" cases would become storage errors and retries."""
    bucket_name, _ = bucket
    assert ("s3:ListBucket", "${" + bucket_name + ".Arn}") in s3_grants(template)


def test_s3_policy_is_attached_to_the_function_role(template: dict[str, Any], function: tuple[str, dict[str, Any]]) -> None:
    name, props = function
    policies = resources_of_type(template, "AWS::IAM::Policy")
    assert policies
    for policy in policies.values():
        role = props.get("Role") or {"Ref": f"{name}Role"}  # SAM names the generated role <Function>Role
        assert policy["Properties"]["Roles"] == [role]


# ---------------------------------------------------------------- failure path and logs


def test_failures_go_to_an_encrypted_sqs_dead_letter_queue(template: dict[str, Any], function: tuple[str, dict[str, Any]]) -> None:
    _, props = function
    config = props["EventInvokeConfig"]
    assert config["MaximumRetryAttempts"] == 2
    on_failure = config["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS"
    queue_name, attribute = on_failure["Destination"]["Fn::GetAtt"]
    assert attribute == "Arn"
    queue = template["Resources"][queue_name]
    assert queue["Type"] == "AWS::SQS::Queue"
    assert queue["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert queue["Properties"].get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in queue["Properties"]


def test_log_group_has_retention_and_is_the_functions(template: dict[str, Any], function: tuple[str, dict[str, Any]]) -> None:
    _, props = function
    group_name, group = only(resources_of_type(template, "AWS::Logs::LogGroup"), "AWS::Logs::LogGroup")
    retention = group["Properties"]["RetentionInDays"]
    assert retention == {"Ref": "LogRetentionDays"}
    assert int(resolve(template, retention)) == 30
    assert props["LoggingConfig"]["LogGroup"] == {"Ref": group_name}


def test_outputs(template: dict[str, Any], bucket: tuple[str, dict[str, Any]]) -> None:
    bucket_name, _ = bucket
    outputs = template["Outputs"]
    assert {"BucketName", "FunctionArn", "UploadPrefix", "DeadLetterQueueUrl"} <= set(outputs)
    assert outputs["BucketName"]["Value"] == {"Ref": bucket_name}
    assert outputs["UploadPrefix"]["Value"] == {"Fn::Sub": "s3://${" + bucket_name + "}/raw/"}


# ---------------------------------------------------------------- dependencies


def _requirements_txt() -> dict[str, Requirement]:
    reqs = {}
    for line in (ROOT / "handler" / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            reqs[canonicalize_name(req.name)] = req
    return reqs


def _pyproject_dependencies() -> dict[str, Requirement]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, deps)}


def test_requirements_txt_is_in_step_with_pyproject() -> None:
    shipped, declared = _requirements_txt(), _pyproject_dependencies()
    assert shipped, "handler/requirements.txt lists nothing"
    for name, req in shipped.items():
        assert name in declared, f"{req} is shipped by sam build but missing from pyproject.toml"
        other = declared[name]
        assert (req.specifier, req.extras, req.marker) == (other.specifier, other.extras, other.marker), (
            f"requirements.txt has {req}, pyproject.toml has {other}"
        )


def test_every_pyproject_dependency_is_shipped_to_lambda() -> None:
    missing = set(_pyproject_dependencies()) - set(_requirements_txt())
    assert not missing, f"in pyproject.toml but not handler/requirements.txt (would be missing on Lambda): {missing}"
