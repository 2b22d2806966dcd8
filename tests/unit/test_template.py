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
DIRECT = "template.yaml"  # S3 notification -> Lambda (async), on-failure destination -> SQS
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
    "s3:GetObject": {"raw/", "processed/"},
    "s3:GetObjectTagging": {"raw/"},
    "s3:PutObjectTagging": {"raw/"},
    "s3:DeleteObject": {"raw/", "processed/"},
    "s3:PutObject": {"processed/"},
}


# ---------------------------------------------------------------- helpers


@functools.cache
def load(name: str) -> dict[str, Any]:
    return cfn_yaml.load(str(ROOT / name))


@pytest.fixture(scope="module", params=[DIRECT, BUFFERED])
def template(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each template in turn: every test that uses it (or `function`, `bucket`) runs on both."""
    return load(request.param)


@pytest.fixture(scope="module")
def direct() -> dict[str, Any]:
    return load(DIRECT)


@pytest.fixture(scope="module")
def buffered() -> dict[str, Any]:
    return load(BUFFERED)


def resources_of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == type_}


def only(mapping: dict[str, Any], what: str) -> tuple[str, Any]:
    assert len(mapping) == 1, f"expected exactly one {what}, found {sorted(mapping)}"
    return next(iter(mapping.items()))


def function_of(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name, res = only(resources_of_type(template, "AWS::Serverless::Function"), "AWS::Serverless::Function")
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
        for item in policy["Properties"]["PolicyDocument"]["Statement"]
        for st in branches(item)
        if st["Effect"] == "Deny" and st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
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


def test_s3_policy_is_attached_to_the_function_role(template: dict[str, Any], function: tuple[str, dict[str, Any]]) -> None:
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


def test_own_policies_grant_no_wildcard_resource(template: dict[str, Any]) -> None:
    """Whatever service: the template's own identity policies never say Resource "*" (SAM's managed
    policies for logs and X-Ray are the only ones that do)."""
    statements = iam_statements(template)
    assert statements
    for st in statements:
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
    function_name, props = function_of(buffered)
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
    """"Same function, same settings": only the trigger, the failure path and where the (same) S3
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


def test_cdn_is_optional_and_off_by_default(template: dict[str, Any]) -> None:
    param = template["Parameters"]["Cdn"]
    assert param["Default"] == "false" and set(param["AllowedValues"]) == {"true", "false"}
    cloudfront = {n: r for n, r in template["Resources"].items() if r["Type"].startswith("AWS::CloudFront::")}
    assert set(r["Type"] for r in cloudfront.values()) >= {
        "AWS::CloudFront::Distribution",
        "AWS::CloudFront::OriginAccessControl",
        "AWS::CloudFront::CachePolicy",
    }
    for name in cloudfront:
        _cdn_condition_is_cdn_true(template, _conditional(template, name))
    for output in ("CdnDomain", "CdnDistributionId", "PublicBaseUrl"):
        _cdn_condition_is_cdn_true(template, template["Outputs"][output]["Condition"])


def test_cdn_reaches_only_processed_through_origin_access_control(template: dict[str, Any]) -> None:
    bucket_name, _ = bucket_of(template)
    dist_name, dist = only(resources_of_type(template, "AWS::CloudFront::Distribution"), "distribution")
    oac_name, oac = only(resources_of_type(template, "AWS::CloudFront::OriginAccessControl"), "OAC")
    config = dist["Properties"]["DistributionConfig"]
    (origin,) = config["Origins"]  # one origin: the bucket, nothing else
    assert origin["DomainName"] == {"Fn::GetAtt": [bucket_name, "RegionalDomainName"]}
    assert origin["OriginAccessControlId"] == {"Fn::GetAtt": [oac_name, "Id"]}
    assert origin["S3OriginConfig"] == {"OriginAccessIdentity": ""}, "OAC, not a legacy origin access identity"
    assert "CustomOriginConfig" not in origin, "an S3 website endpoint would need a public bucket"
    assert "CacheBehaviors" not in config, "one behaviour; what it may read is the bucket policy's business"
    oac_config = oac["Properties"]["OriginAccessControlConfig"]
    assert oac_config["OriginAccessControlOriginType"] == "s3"
    assert (oac_config["SigningBehavior"], oac_config["SigningProtocol"]) == ("always", "sigv4")

    allows = [(cond, st) for cond, st in _policy_statements(template) if st["Effect"] == "Allow"]
    (condition, statement), = allows  # the bucket policy allows this and nothing else
    _cdn_condition_is_cdn_true(template, condition)
    assert statement["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert as_list(statement["Action"]) == ["s3:GetObject"]
    assert as_list(statement["Resource"]) == [{"Fn::Sub": "${" + bucket_name + ".Arn}/processed/*"}]
    (operator, values), = statement["Condition"].items()
    assert operator in ("StringEquals", "ArnEquals")
    (key, source_arn), = values.items()
    assert key == "aws:SourceArn"
    assert source_arn == {
        "Fn::Sub": "arn:${AWS::Partition}:cloudfront::${AWS::AccountId}:distribution/${" + dist_name + "}"
    }, "only this distribution"


def test_no_bucket_policy_statement_is_public(template: dict[str, Any]) -> None:
    _, props = bucket_of(template)
    assert all(props["PublicAccessBlockConfiguration"][k] is True for k in (
        "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    for _, statement in _policy_statements(template):
        if statement["Effect"] == "Allow":
            assert statement["Principal"] not in ("*", {"AWS": "*"}), f"public Allow: {statement}"
            assert "Condition" in statement, f"an Allow without a condition: {statement}"


def test_cdn_serves_https_get_head_uncompressed_and_honours_cache_control(template: dict[str, Any]) -> None:
    _, dist = only(resources_of_type(template, "AWS::CloudFront::Distribution"), "distribution")
    behaviour = dist["Properties"]["DistributionConfig"]["DefaultCacheBehavior"]
    assert behaviour["ViewerProtocolPolicy"] in ("redirect-to-https", "https-only")
    assert behaviour["AllowedMethods"] == ["GET", "HEAD"]
    assert behaviour["CachedMethods"] == ["GET", "HEAD"]
    assert behaviour["Compress"] is False, "images are compressed already"
    assert "ForwardedValues" not in behaviour, "legacy cache settings would override the cache policy"
    policy_name = behaviour["CachePolicyId"]["Ref"]
    policy = template["Resources"][policy_name]
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
    dist_name, _ = only(resources_of_type(template, "AWS::CloudFront::Distribution"), "distribution")
    outputs = template["Outputs"]
    assert outputs["CdnDomain"]["Value"] == {"Fn::GetAtt": [dist_name, "DomainName"]}
    # Variant URL = PUBLIC_BASE_URL + the key in manifest.json (processed/...), so a trailing slash
    # and no OriginPath (the viewer path is the object key).
    assert outputs["PublicBaseUrl"]["Value"] == {"Fn::Sub": "https://${" + dist_name + ".DomainName}/"}
    _, dist = only(resources_of_type(template, "AWS::CloudFront::Distribution"), "distribution")
    assert all("OriginPath" not in o for o in dist["Properties"]["DistributionConfig"]["Origins"])


# ---------------------------------------------------------------- alarms and dashboard (all three templates)


@pytest.fixture(scope="module", params=[DIRECT, BUFFERED, EXISTING])
def any_template(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


@pytest.fixture(scope="module")
def existing() -> dict[str, Any]:
    return load(EXISTING)


def _alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: res["Properties"] for name, res in resources_of_type(template, "AWS::CloudWatch::Alarm").items()}


def _alarm_on(template: dict[str, Any], namespace: str, metric: str) -> dict[str, Any]:
    (alarm,) = [a for a in _alarms(template).values() if (a["Namespace"], a["MetricName"]) == (namespace, metric)]
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
        operator, threshold)


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


def test_every_alarm_notifies_the_topic_and_email_is_optional(any_template: dict[str, Any]) -> None:
    template = any_template
    topic, _ = only(resources_of_type(template, "AWS::SNS::Topic"), "AWS::SNS::Topic")
    alarms = _alarms(template)
    assert len(alarms) >= 5
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": topic}], name
        assert alarm["TreatMissingData"] == "notBreaching", f"{name}: no data means nothing happened"
    sub_name, sub = only(resources_of_type(template, "AWS::SNS::Subscription"), "AWS::SNS::Subscription")
    assert sub["Properties"] == {"TopicArn": {"Ref": topic}, "Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}
    assert template["Conditions"][_conditional(template, sub_name)] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]
    }
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    assert template["Outputs"]["AlarmTopicArn"]["Value"] == {"Ref": topic}


def test_alarm_on_messages_in_the_dead_letter_queue(any_template: dict[str, Any]) -> None:
    template = any_template
    alarm = _alarm_on(template, "AWS/SQS", "ApproximateNumberOfMessagesVisible")
    (queue_name, attribute) = _dimensions(alarm)["QueueName"]["Fn::GetAtt"]
    assert attribute == "QueueName"
    assert {queue_name} == _dead_letter_queues(template), "the alarm watches another queue"
    assert alarm["Statistic"] == "Maximum" and alarm["EvaluationPeriods"] == 1
    _fires_on_first(alarm, template)


@pytest.mark.parametrize("metric", ["Errors", "Throttles"])
def test_alarms_on_function_errors_and_throttles(any_template: dict[str, Any], metric: str) -> None:
    function_name, _ = function_of(any_template)
    alarm = _alarm_on(any_template, "AWS/Lambda", metric)
    assert _dimensions(alarm) == {"FunctionName": {"Ref": function_name}}
    assert alarm["Statistic"] == "Sum"
    assert float(alarm["Threshold"]) == 1.0 and alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


@pytest.mark.parametrize("metric", ["ImagesFailed", "StoragePermanentFailures"])
def test_alarms_on_the_pipelines_own_metrics(any_template: dict[str, Any], metric: str) -> None:
    """Namespace and `service` dimension are those the handler's Powertools Metrics emit with (its
    environment), so the alarm watches the metric the function writes, not a look-alike."""
    _, props = function_of(any_template)
    env = props["Environment"]["Variables"]
    alarm = _alarm_on(any_template, env["POWERTOOLS_METRICS_NAMESPACE"], metric)
    assert _dimensions(alarm) == {"service": env["POWERTOOLS_SERVICE_NAME"]}
    assert alarm["Statistic"] == "Sum" and alarm["EvaluationPeriods"] == 1
    if metric == "ImagesFailed":
        assert alarm["Threshold"] == {"Ref": "FailedImagesAlarmThreshold"}
    _fires_on_first(alarm, any_template)


def test_metric_names_alarmed_on_are_emitted_by_the_handler() -> None:
    source = (ROOT / "handler" / "image_pipeline" / "handler.py").read_text(encoding="utf-8")
    for name in ("ImagesProcessed", "ImagesFailed", "ImagesFailedByCode", "TotalMs", "capture_cold_start_metric=True"):
        assert name in source, name


def _dashboard(template: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The dashboard body as JSON (each ${X} replaced by a placeholder) and the names it substitutes."""
    import json
    import re

    _, dashboard = only(resources_of_type(template, "AWS::CloudWatch::Dashboard"), "AWS::CloudWatch::Dashboard")
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    assert isinstance(body, str)
    names = re.findall(r"\$\{([^}]+)\}", body)
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: "<" + m.group(1) + ">", body)), names


def test_dashboard_shows_outcomes_codes_latency_cold_starts_and_dlq_depth(any_template: dict[str, Any]) -> None:
    template = any_template
    body, names = _dashboard(template)
    for name in names:  # every ${...} names a resource (or its attribute) or a pseudo parameter
        assert name.startswith("AWS::") or name.split(".")[0] in template["Resources"], name
    function_name, props = function_of(template)
    env = props["Environment"]["Variables"]
    namespace = env["POWERTOOLS_METRICS_NAMESPACE"]
    assert env["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    service = "<AWS::StackName>"  # the same value, as the dashboard's Fn::Sub writes it
    lines = [m for w in body["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]]
    plain = [tuple(x for x in line if isinstance(x, str)) for line in lines if isinstance(line[0], str)]
    stats = {(line[1], line[-1].get("stat")) for line in lines if isinstance(line[0], str) and isinstance(line[-1], dict)}
    for metric in ("ImagesProcessed", "ImagesFailed"):
        assert (namespace, metric, "service", service) in plain, metric
    assert {("TotalMs", "p50"), ("TotalMs", "p95")} <= stats
    assert (namespace, "ColdStart", "function_name", f"<{function_name}>", "service", service) in plain
    (dlq,) = _dead_letter_queues(template)
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", f"<{dlq}.QueueName>") in plain
    searches = [line[0]["expression"] for line in lines if isinstance(line[0], dict)]
    assert any(
        f"{{{namespace},ErrorCode,service}}" in s and 'MetricName="ImagesFailedByCode"' in s
        and f'service="{service}"' in s for s in searches
    ), "rejected images per error code, of this stack only"
    alarm_widget = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert {f"<{name}.Arn>" for name in _alarms(template)} == set(alarm_widget[0]["properties"]["alarms"])


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


def test_existing_bucket_rule_invokes_the_function_with_retries_and_a_dead_letter_queue(existing: dict[str, Any]) -> None:
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
    assert granted["s3:PutObject"] == {"processed/"}
    assert granted["s3:GetObject"] == {"raw/", "processed/"}
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
                    assert if_true["Condition"] == {"StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}}
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
    assert resources_of_type(existing, "AWS::Logs::LogGroup") == resources_of_type(direct, "AWS::Logs::LogGroup")
# ---------------------------------------------------------------- upload API and completion events

API_STACK = "stacks/api.yaml"


def _api_function(api: dict[str, Any]) -> dict[str, Any]:
    _, res = only(resources_of_type(api, "AWS::Serverless::Function"), "AWS::Serverless::Function")
    return res["Properties"]


def test_both_templates_nest_the_api_stack_with_the_pipeline_settings(template: dict[str, Any]) -> None:
    _, app = only(resources_of_type(template, "AWS::Serverless::Application"), "AWS::Serverless::Application")
    props = app["Properties"]
    assert props["Location"] == API_STACK and (ROOT / API_STACK).is_file()
    params = props["Parameters"]
    for name in ("Variants", "RawDisposition", "AllowedTypes", "MaxInputBytes", "MaxPixels", "CacheControl"):
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
    (layer_ref,) = props["Layers"]
    layer = api["Resources"][layer_ref["Ref"]]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    layer_requirements = ROOT / "stacks" / layer["Properties"]["ContentUri"] / "requirements.txt"
    names = {Requirement(line).name for line in layer_requirements.read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert names == {"litestar", "mangum", "pyjwt"}
    # ... and none of it in the pipeline function's artefact
    assert not names & set(_requirements_txt())
    with (ROOT / "pyproject.toml").open("rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    api_extra = {canonicalize_name(Requirement(r).name): Requirement(r) for r in extras["api"]}
    for line in layer_requirements.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert str(api_extra[req.name].specifier) == str(req.specifier), f"{req} vs pyproject's api extra"
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
    granted: dict[str, set[str]] = {}
    for st in statements:
        assert st["Effect"] == "Allow"
        for action in as_list(st["Action"]):
            assert action.startswith("s3:") and "*" not in action, action
            resource = arn_text(st["Resource"])
            if action == "s3:ListBucket":
                assert resource == "${BucketArn}"
                assert st["Condition"] == {"StringLikeIfExists": {"s3:prefix": ["raw/*", "processed/*"]}}
                continue
            prefix = resource.removeprefix("${BucketArn}/")
            assert prefix != resource and prefix.endswith("/*"), resource
            granted.setdefault(action, set()).add(prefix.removesuffix("*"))
    assert granted == allowed


def test_api_jwt_authorizer_is_optional_and_guards_every_route() -> None:
    api = load(API_STACK)
    assert api["Conditions"]["HasJwt"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "JwtIssuer"}, ""]}]}
    _, authorizer = only(resources_of_type(api, "AWS::ApiGatewayV2::Authorizer"), "authorizer")
    assert authorizer["Condition"] == "HasJwt"
    config = authorizer["Properties"]
    assert config["AuthorizerType"] == "JWT"
    assert config["JwtConfiguration"] == {"Issuer": {"Ref": "JwtIssuer"}, "Audience": [{"Ref": "JwtAudience"}]}
    routes = resources_of_type(api, "AWS::ApiGatewayV2::Route")
    assert [r["Properties"]["RouteKey"] for r in routes.values()] == ["$default"]  # one route: all paths
    (route,) = routes.values()
    assert route["Properties"]["AuthorizationType"] == {"Fn::If": ["HasJwt", "JWT", "NONE"]}
    _, stage = only(resources_of_type(api, "AWS::ApiGatewayV2::Stage"), "stage")
    assert stage["Properties"]["DefaultRouteSettings"]["ThrottlingRateLimit"] == {"Ref": "ThrottleRate"}


def test_bucket_cors_and_api_cors_follow_allowed_origins(template: dict[str, Any], bucket: tuple[str, dict[str, Any]]) -> None:
    _, props = bucket
    (rule,) = props["CorsConfiguration"]["CorsRules"]
    assert rule["AllowedOrigins"] == {"Fn::Split": [",", {"Ref": "AllowedOrigins"}]}
    assert "POST" in rule["AllowedMethods"] and "PUT" not in rule["AllowedMethods"]  # presigned POST only
    api = load(API_STACK)
    _, http_api = only(resources_of_type(api, "AWS::ApiGatewayV2::Api"), "HTTP API")
    assert http_api["Properties"]["CorsConfiguration"]["AllowOrigins"] == {"Fn::Split": [",", {"Ref": "AllowedOrigins"}]}


def test_pipeline_may_put_events_on_the_configured_bus_only(template: dict[str, Any], function: tuple[str, dict[str, Any]]) -> None:
    name, props = function
    assert props["Environment"]["Variables"]["EVENT_BUS_NAME"] == {"Ref": "EventBusName"}
    assert template["Conditions"]["HasEventBus"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "EventBusName"}, ""]}]}
    events = grants(template, "events")
    assert events == [("events:PutEvents", "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}")]
    (policy,) = [r for r in resources_of_type(template, "AWS::IAM::Policy").values() if "events:" in str(r)]
    assert policy["Condition"] == "HasEventBus"
    assert policy["Properties"]["Roles"] == [{"Ref": f"{name}Role"}]
