"""CloudFormation templates as they would deploy with given parameters, for the template tests.

`deploy("template.yaml", {"ApiAuth": "iam"})` resolves every parameter (the value given, else its
Default; AllowedValues, AllowedPattern and a Number's MinValue/MaxValue are checked as
CloudFormation would), checks the template's Rules (a failing assertion raises `RuleFailed`, as
CloudFormation refuses the stack), evaluates every condition, keeps only the resources and outputs
whose condition holds, and renders their properties: `Fn::If` picks its branch, `AWS::NoValue`
disappears, `Ref` to a parameter becomes its value, and `Fn::Split` / `Fn::Join` / `Fn::Select` /
`Fn::Sub` over known strings are computed. What only exists at deploy time (`Fn::GetAtt`, a `Ref` to a resource or a
pseudo parameter) stays as it is written. A nested stack (`AWS::Serverless::Application` or
`AWS::CloudFormation::Stack` with a local `Location` / `TemplateURL`) is deployed in turn with the
parameters its parent passes, so `Stack.walk()` sees every resource the whole deploy would create.
What a parent passes that is known at deploy time only (!Ref ImageBucket, !GetAtt ImageBucket.Arn,
!Ref AWS::StackName) is rendered in the nested stack in the parent's terms: `!Ref BucketArn` becomes
`{"Fn::GetAtt": ["ImageBucket", "Arn"]}` and `!Sub "${BucketArn}/raw/*"` becomes
`{"Fn::Sub": "${ImageBucket.Arn}/raw/*"}`, so a check reads a nested resource as if it were written
in the parent. A condition that compares such a value with "" is false (a resource's name, id or
attribute is never empty: `QueueName: !GetAtt ImageQueue.QueueName` makes the nested stack's
`HasQueue` true); any other comparison with it raises `Unresolvable`. `Stack.follow()` goes the
other way, from a parent's !GetAtt X.Outputs.Y to the value.

Templates are read with cfn-lint's CloudFormation-aware YAML loader, so short-form intrinsics
(!Ref, !Sub, !If, ...) come back in their long form ({"Ref": ...}, {"Fn::Sub": ...}).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NESTED_STACK_TYPES = {"AWS::Serverless::Application": "Location", "AWS::CloudFormation::Stack": "TemplateURL"}
_NO_VALUE = object()  # what `Ref: AWS::NoValue` renders to: removed from the enclosing dict or list


class Unresolvable(ValueError):
    """A condition depends on a value only known at deploy time (a resource attribute, say)."""


class RuleFailed(ValueError):
    """A Rules assertion is false: CloudFormation would refuse to create or update the stack."""


@functools.cache
def _load_file(path: Path) -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml  # dev dependency (cfn-lint); imported here so collection never fails on it

    return cfn_yaml.load(str(path))


def load(name: str | Path) -> dict[str, Any]:
    """A template (path relative to the repository root) as written, intrinsics in long form."""
    return _load_file((ROOT / name).resolve())


def _parameter_value(name: str, spec: Mapping[str, Any], given: Any) -> Any:
    value = given if given is not None else spec.get("Default")
    if value is None:
        raise KeyError(f"parameter {name} has no Default and was not given")
    if isinstance(value, dict):  # passed by a parent as !GetAtt / !Ref to a resource: known at deploy time only
        return value
    value = str(_scalar(value))
    if "AllowedValues" in spec and value not in [str(_scalar(v)) for v in spec["AllowedValues"]]:
        raise ValueError(f"{name}={value!r} is not one of {spec['AllowedValues']}")
    if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
        raise ValueError(f"{name}={value!r} does not match {spec['AllowedPattern']}")
    if spec.get("Type") == "Number" and not (
        float(spec.get("MinValue", "-inf")) <= float(value) <= float(spec.get("MaxValue", "inf"))
    ):
        raise ValueError(f"{name}={value} is outside {spec.get('MinValue')}..{spec.get('MaxValue')}")
    if spec.get("Type", "String").startswith("CommaDelimitedList") or spec.get("Type", "").startswith("List<"):
        return value.split(",")
    return value


@dataclass
class Stack:
    """One deployed template: its parameter values, conditions, resources and outputs, rendered."""

    name: str
    template: dict[str, Any]
    parameters: dict[str, Any]
    conditions: dict[str, bool] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    nested: dict[str, Stack] = field(default_factory=dict)

    # ------------------------------------------------------------------ evaluation
    def condition(self, name: str, _seen: tuple[str, ...] = ()) -> bool:
        if name not in self.conditions:
            if name in _seen:
                raise ValueError(f"condition {name} refers to itself")
            self.conditions[name] = self.truth(self.template["Conditions"][name], (*_seen, name))
        return self.conditions[name]

    def truth(self, expression: Any, _seen: tuple[str, ...] = ()) -> bool:
        """Fn::Equals / Fn::Not / Fn::And / Fn::Or / Condition, as CloudFormation evaluates them."""
        ((function, args),) = expression.items()
        if function == "Condition":
            return self.condition(args, _seen)
        if function == "Fn::Not":
            (inner,) = args
            return not self.truth(inner, _seen)
        if function == "Fn::And":
            return all(self.truth(a, _seen) for a in args)
        if function == "Fn::Or":
            return any(self.truth(a, _seen) for a in args)
        if function == "Fn::Equals":
            left, right = (self.render(a) for a in args)
            for side, other in ((left, right), (right, left)):
                if isinstance(side, dict):
                    # A resource's id, name or attribute (a value a parent passes down, say) is
                    # never the empty string; anything else about it is known at deploy time only.
                    if other == "" and _sub_text(side) is not None:
                        return False
                    raise Unresolvable(f"{self.name}: cannot compare {side!r} before deploying")
            return _scalar(left) == _scalar(right)
        raise ValueError(f"{self.name}: {function} is not a condition function")

    def render(self, value: Any) -> Any:
        """`value` as CloudFormation would hand it to the resource (see the module docstring)."""
        if isinstance(value, list):
            return [r for r in (self.render(v) for v in value) if r is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((function, args),) = value.items()
            if function == "Ref":
                if args == "AWS::NoValue":
                    return _NO_VALUE
                return self.parameters.get(args, value)
            if function == "Fn::If":
                condition, if_true, if_false = args
                return self.render(if_true if self.condition(condition) else if_false)
            if function in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition"):
                return self.truth(value)
            if function == "Fn::Split":
                delimiter, source = self.render(args[0]), self.render(args[1])
                return source.split(delimiter) if isinstance(source, str) else {function: [delimiter, source]}
            if function == "Fn::Join":
                delimiter, items = self.render(args[0]), self.render(args[1])
                if isinstance(items, list) and all(isinstance(i, str) for i in items):
                    return delimiter.join(items)
                return {function: [delimiter, items]}
            if function == "Fn::Select":
                index, items = self.render(args[0]), self.render(args[1])
                return items[int(index)] if isinstance(items, list) else {function: [index, items]}
            if function == "Fn::Sub":
                return self._sub(args)
            if function.startswith("Fn::"):  # GetAtt, ImportValue, GetAZs, ...: known at deploy time only
                return value
        rendered = {k: self.render(v) for k, v in value.items()}
        return {k: v for k, v in rendered.items() if v is not _NO_VALUE}

    def _sub(self, args: Any) -> Any:
        text, variables = (args, {}) if isinstance(args, str) else (args[0], self.render(args[1]))
        known = {**self.parameters, **variables}
        left: dict[str, Any] = {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            value = _sub_text(known[name]) if name in known else None
            if value is None and name in variables:
                left[name] = variables[name]
            return match.group(0) if value is None else value

        result = re.sub(r"\$\{([^!}][^}]*)\}", replace, text)
        if left:
            return {"Fn::Sub": [result, left]}
        if re.search(r"\$\{[^!]", result):
            return {"Fn::Sub": result}  # still names a resource attribute or pseudo parameter
        return result.replace("${!", "${")

    # ------------------------------------------------------------------ inspection
    def walk(self) -> Iterator[Stack]:
        """This stack and every stack nested in it, depth first."""
        yield self
        for child in self.nested.values():
            yield from child.walk()

    def follow(self, value: Any) -> Any:
        """`value` with a !GetAtt <nested stack>.Outputs.<name> replaced by that output's rendered
        value (in the nested template's terms), as often as it leads to another nested stack."""
        if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
            target = value["Fn::GetAtt"]
            name, _, attribute = (target if isinstance(target, str) else ".".join(target)).partition(".")
            if name in self.nested and attribute.startswith("Outputs."):
                child = self.nested[name]
                return child.follow(child.outputs[attribute.removeprefix("Outputs.")]["Value"])
        return value

    def of_type(self, *types: str) -> dict[str, dict[str, Any]]:
        """This stack's created resources of those types: logical id -> rendered Properties."""
        return {name: res.get("Properties", {}) for name, res in self.resources.items() if res["Type"] in types}

    def everywhere(self, *types: str) -> list[tuple[Stack, str, dict[str, Any]]]:
        """(stack, logical id, Properties) of every created resource of those types, nested stacks included."""
        return [(stack, name, props) for stack in self.walk() for name, props in stack.of_type(*types).items()]


def _sub_text(value: Any) -> str | None:
    """`value` as Fn::Sub text: a string as it is; a value known at deploy time only (a parameter a
    parent passed as !Ref X / !GetAtt X.Y, a variable that is a !Sub of its own) as the `${X}`,
    `${X.Y}` or text that stands for it, in the terms of the template that wrote it; else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((function, args),) = value.items()
        if function == "Ref" and isinstance(args, str):
            return "${" + args + "}"
        if function == "Fn::GetAtt":
            return "${" + (args if isinstance(args, str) else ".".join(args)) + "}"
        if function == "Fn::Sub" and isinstance(args, str):
            return args
    return None


def _scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return value


def deploy(
    name: str | Path, parameters: Mapping[str, Any] | None = None, *, _template: dict[str, Any] | None = None
) -> Stack:
    """The stack `name` (relative to the repository root) would create with these parameters."""
    template = _template if _template is not None else load(name)
    given = dict(parameters or {})
    declared = template.get("Parameters", {})
    unknown = set(given) - set(declared)
    if unknown:
        raise KeyError(f"{name} has no parameter(s) {sorted(unknown)}")
    values = {p: _parameter_value(p, spec, given.get(p)) for p, spec in declared.items()}
    stack = Stack(str(name), template, values)
    for rule_name, rule in template.get("Rules", {}).items():
        if "RuleCondition" in rule and not stack.truth(rule["RuleCondition"]):
            continue
        for assertion in rule["Assertions"]:
            if not stack.truth(assertion["Assert"]):
                raise RuleFailed(f"{name}: rule {rule_name}: {assertion.get('AssertDescription', assertion['Assert'])}")
    for condition in template.get("Conditions", {}):
        stack.condition(condition)
    for logical_id, resource in template["Resources"].items():
        if "Condition" in resource and not stack.condition(resource["Condition"]):
            continue
        rendered = {k: stack.render(v) for k, v in resource.items() if k != "Condition"}
        stack.resources[logical_id] = rendered
        location_key = NESTED_STACK_TYPES.get(resource["Type"])
        location = rendered.get("Properties", {}).get(location_key) if location_key else None
        if isinstance(location, str) and not re.match(r"^(s3|https?)://", location):
            child = (Path(name).parent / location).as_posix()
            stack.nested[logical_id] = deploy(child, rendered["Properties"].get("Parameters", {}))
    for output_name, output in template.get("Outputs", {}).items():
        if "Condition" not in output or stack.condition(output["Condition"]):
            stack.outputs[output_name] = stack.render({k: v for k, v in output.items() if k != "Condition"})
    return stack
