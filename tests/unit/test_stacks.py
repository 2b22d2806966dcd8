"""One copy of every piece of infrastructure: no resource is defined in two templates.

The three top-level templates (template.yaml, template-buffered.yaml, template-existing-bucket.yaml)
hold their own trigger, bucket (or existing bucket), queues, function, log groups and wiring; what
they share is written once under stacks/ and nested (AWS::Serverless::Application). A resource's
definition is its Type, Properties and Condition, compared as written (intrinsics in long form).

What may repeat is each top-level template's interface:
* the nested stack resources: they are the parameters a template passes to a shared stack;
* the stateful resources, which keep their logical ids (and so their data, names and ARNs) in the
  top-level templates: STATEFUL below. Moving one into a nested stack would replace it on update.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.cfn import NESTED_STACK_TYPES, load

pytest.importorskip("cfnlint.decode.cfn_yaml")

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("template.yaml", "template-buffered.yaml", "template-existing-bucket.yaml")
SHARED = tuple(sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "stacks").glob("*.yaml")))
STATEFUL = {
    # logical id -> why it stays in each top-level template (an update must not replace it)
    "ImageBucket": "the images",
    # S3 keeps one policy per bucket, known by the bucket's name: a nested copy would be created
    # first and then removed with the old resource in the update's clean-up, leaving no policy.
    "ImageBucketPolicy": "the bucket's only policy (TLS only; the CDN's read access)",
    "ImageQueue": "uploads waiting to be processed (buffered mode)",
    "DeadLetterQueue": "events that failed every retry",
    "FunctionLogGroup": "the pipeline's logs, under a fixed name",
    "OnDemandLogGroup": "the on-demand function's logs, under a fixed name",
    "ImagePipelineFunction": "the pipeline function and the role SAM makes for it",
}


def definition(resource: dict[str, Any]) -> str:
    """What makes two resources the same resource: Type, Properties and Condition."""
    return json.dumps(
        {key: resource.get(key) for key in ("Type", "Properties", "Condition")}, sort_keys=True, default=str
    )


def interface(template: str, logical_id: str, resource: dict[str, Any]) -> bool:
    """A repeat that is allowed: a top-level template's nested stack wiring, or a stateful resource
    that keeps its logical id there."""
    if template not in TOP_LEVEL:
        return False
    return resource["Type"] in NESTED_STACK_TYPES or logical_id in STATEFUL


def repeats(templates: Iterable[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[str]]:
    """(the same definition in two templates, the same logical id and type in two templates), each
    outside the allowed interface."""
    by_definition: dict[str, list[str]] = {}
    by_name: dict[tuple[str, str], list[str]] = {}
    for name, template in templates:
        for logical_id, resource in template.get("Resources", {}).items():
            if interface(name, logical_id, resource):
                continue
            by_definition.setdefault(definition(resource), []).append(f"{name}: {logical_id}")
            by_name.setdefault((logical_id, resource["Type"]), []).append(name)
    same = [" = ".join(where) for where in by_definition.values() if len(where) > 1]
    drifted = [
        f"{logical_id} ({kind}) in {', '.join(where)}"
        for (logical_id, kind), where in by_name.items()
        if len(where) > 1
    ]
    return same, drifted


def test_the_shared_stacks_are_there() -> None:
    assert {"stacks/api.yaml", "stacks/cdn.yaml", "stacks/ops.yaml", "stacks/events.yaml"} <= set(SHARED)


def test_no_resource_is_defined_in_two_templates() -> None:
    """Every resource is written once: a change to the CDN, an alarm or a permission is made in one
    place. A copy that has since drifted (same logical id and type, another definition) counts too."""
    same, drifted = repeats((name, load(name)) for name in (*TOP_LEVEL, *SHARED))
    assert same == [], "defined twice"
    assert drifted == [], "the same resource in two templates"


def test_stateful_resources_keep_their_logical_ids_in_the_top_level_templates() -> None:
    """An update from a stack deployed before the nested stacks replaces nothing that holds data or
    a fixed name: each stateful resource is still in the top-level template that had it."""
    found: dict[str, set[str]] = {}
    for name in TOP_LEVEL:
        for logical_id in load(name)["Resources"]:
            if logical_id in STATEFUL:
                found.setdefault(logical_id, set()).add(name)
    assert found == {
        "ImageBucket": {"template.yaml", "template-buffered.yaml"},
        "ImageBucketPolicy": {"template.yaml", "template-buffered.yaml"},
        "ImageQueue": {"template-buffered.yaml"},
        "DeadLetterQueue": set(TOP_LEVEL),
        "FunctionLogGroup": set(TOP_LEVEL),
        "OnDemandLogGroup": {"template.yaml", "template-buffered.yaml"},
        "ImagePipelineFunction": set(TOP_LEVEL),
    }
    for name in SHARED:
        assert not set(load(name)["Resources"]) & set(STATEFUL), f"{name} holds a stateful resource"


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_every_nested_stack_gets_what_it_needs_and_nothing_it_does_not_know(name: str) -> None:
    """A nested stack's interface: every parameter passed is one it declares, and every parameter
    without a Default is passed (CloudFormation would refuse the stack otherwise)."""
    for logical_id, resource in load(name)["Resources"].items():
        if resource["Type"] not in NESTED_STACK_TYPES:
            continue
        location = resource["Properties"][NESTED_STACK_TYPES[resource["Type"]]]
        assert location in SHARED, f"{name}: {logical_id} nests {location}, not a stack under stacks/"
        declared = load(location)["Parameters"]
        passed = set(resource["Properties"].get("Parameters", {}))
        assert passed <= set(declared), f"{name}: {logical_id} passes {sorted(passed - set(declared))}"
        required = {p for p, spec in declared.items() if "Default" not in spec}
        assert required <= passed, f"{name}: {logical_id} does not pass {sorted(required - passed)}"


def test_every_shared_stack_is_nested_by_a_top_level_template() -> None:
    nested = {
        res["Properties"][NESTED_STACK_TYPES[res["Type"]]]
        for name in TOP_LEVEL
        for res in load(name)["Resources"].values()
        if res["Type"] in NESTED_STACK_TYPES
    }
    assert nested == set(SHARED)


def test_the_check_sees_a_copy_and_a_drifted_copy() -> None:
    """The comparison above, on what it must catch (so a pass means something)."""
    topic = {"Type": "AWS::SNS::Topic", "Properties": {"DisplayName": "alarms"}}
    drifted = {"Type": "AWS::SNS::Topic", "Properties": {"DisplayName": "other alarms"}}
    bucket = {"Type": "AWS::S3::Bucket", "Properties": {}}
    app = {"Type": "AWS::Serverless::Application", "Properties": {"Location": "stacks/ops.yaml"}}
    same, renamed = repeats(
        [
            ("template.yaml", {"Resources": {"Topic": topic, "ImageBucket": bucket, "Ops": app}}),
            ("template-buffered.yaml", {"Resources": {"AlarmTopic": topic, "ImageBucket": bucket, "Ops": app}}),
            ("stacks/ops.yaml", {"Resources": {"Topic": drifted, "ImageBucket": bucket}}),
        ]
    )
    assert same == ["template.yaml: Topic = template-buffered.yaml: AlarmTopic"]
    assert renamed == ["Topic (AWS::SNS::Topic) in template.yaml, stacks/ops.yaml"]
    # a stateful id is the interface only in a top-level template: a nested copy of the bucket counts
    same, _ = repeats(
        [
            ("stacks/a.yaml", {"Resources": {"ImageBucket": bucket}}),
            ("stacks/b.yaml", {"Resources": {"ImageBucket": bucket}}),
        ]
    )
    assert same == ["stacks/a.yaml: ImageBucket = stacks/b.yaml: ImageBucket"]


def test_the_evaluator_renders_a_nested_stack_in_its_parents_terms() -> None:
    """tests/cfn.py: what a parent passes that is known at deploy time only stays a reference to the
    parent's resource inside the nested stack, in !Ref, !Sub and conditions alike; nested outputs
    are followed back to the value."""
    from tests.cfn import deploy

    buffered = deploy("template-buffered.yaml", {"Cdn": "true"})
    ops, cdn = buffered.nested["OpsStack"], buffered.nested["CdnStack"]
    assert ops.parameters["QueueName"] == {"Fn::GetAtt": ["ImageQueue", "QueueName"]}
    assert ops.conditions["HasQueue"] is True and "QueueBacklogAlarm" in ops.resources
    assert deploy("template.yaml").nested["OpsStack"].conditions["HasQueue"] is False
    statements = cdn.resources["OnDemandFunction"]["Properties"]["Policies"][0]["Statement"]
    assert statements[0]["Resource"] == {"Fn::Sub": "${ImageBucket.Arn}/raw/*"}
    assert statements[2]["Resource"] == {"Fn::GetAtt": ["ImageBucket", "Arn"]}
    assert buffered.follow({"Fn::GetAtt": ["CdnStack", "Outputs.DomainName"]}) == {
        "Fn::GetAtt": ["CdnDistribution", "DomainName"]
    }
    assert buffered.follow({"Fn::GetAtt": ["ImageQueue", "Arn"]}) == {"Fn::GetAtt": ["ImageQueue", "Arn"]}
