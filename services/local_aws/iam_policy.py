"""IAM policy evaluation: statements, wildcards and conditions, as AWS evaluates them.

Pure functions over policy documents (no moto, no HTTP): Allow/Deny, Action/NotAction,
Resource/NotResource, Principal/NotPrincipal (resource policies), `*`/`?` wildcards (actions
case-insensitive), and conditions with the String*, Arn*, Bool, Numeric* and Null operators,
`...IfExists` and `ForAnyValue:`/`ForAllValues:`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

ALLOW, DENY, NEUTRAL = "Allow", "Deny", "Neutral"


def evaluate(
    documents: Iterable[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, list[str]],
    principal: str | None = None,
) -> str:
    """Allow, Deny (explicit) or Neutral for one set of policy documents."""
    result = NEUTRAL
    for document in documents:
        statements = document.get("Statement", [])
        if isinstance(statements, dict):
            statements = [statements]
        for statement in statements:
            effect = _statement(statement, action, resource, context, principal)
            if effect == DENY:
                return DENY
            if effect == ALLOW:
                result = ALLOW
    return result


def _statement(
    statement: Mapping[str, Any],
    action: str,
    resource: str,
    context: Mapping[str, list[str]],
    principal: str | None,
) -> str:
    if "NotAction" in statement:
        if _any_match(statement["NotAction"], action, ignore_case=True):
            return NEUTRAL
    elif not _any_match(statement.get("Action", []), action, ignore_case=True):
        return NEUTRAL
    if "NotResource" in statement:
        if _any_match(statement["NotResource"], resource):
            return NEUTRAL
    elif "Resource" in statement and not _any_match(statement["Resource"], resource):
        return NEUTRAL
    if principal is not None and not _principal_matches(statement, principal):
        return NEUTRAL
    if not _conditions_hold(statement.get("Condition", {}), context):
        return NEUTRAL
    return DENY if statement.get("Effect") == "Deny" else ALLOW


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _any_match(patterns: Any, value: str, ignore_case: bool = False) -> bool:
    return any(_glob(p, value, ignore_case) for p in _as_list(patterns))


def _glob(pattern: str, value: str, ignore_case: bool = False) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == value.lower() if ignore_case else pattern == value
    escaped = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    flags = re.IGNORECASE if ignore_case else 0
    return re.fullmatch(escaped, value, flags) is not None


def _principal_matches(statement: Mapping[str, Any], principal: str) -> bool:
    """Resource policies: does the statement name this caller (role, session, account or *)?"""
    if "NotPrincipal" in statement:
        return not _principal_listed(statement["NotPrincipal"], principal)
    if "Principal" not in statement:
        return False
    return _principal_listed(statement["Principal"], principal)


def _principal_listed(value: Any, principal: str) -> bool:
    if value == "*":
        return True
    names = _as_list(value.get("AWS")) if isinstance(value, dict) else _as_list(value)
    session_arn, role_arn, account = principal.split("|")
    for name in names:
        if name in ("*", session_arn, role_arn, account, f"arn:aws:iam::{account}:root"):
            return True
    return False


def _conditions_hold(conditions: Mapping[str, Any], context: Mapping[str, list[str]]) -> bool:
    for operator, pairs in conditions.items():
        if not isinstance(pairs, dict):
            return False
        for key, expected in pairs.items():
            if not _condition(operator, key, _as_list(expected), context):
                return False
    return True


def _condition(
    operator: str, key: str, expected: list[str], context: Mapping[str, list[str]]
) -> bool:
    qualifier, _, op = operator.rpartition(":")
    if_exists = op.endswith("IfExists")
    op = op.removesuffix("IfExists")
    actual = _context_value(context, key)
    if op == "Null":
        return (actual is None) == (expected[0].lower() == "true")
    if actual is None:
        # A missing key: ...IfExists and negated operators hold, everything else fails.
        return if_exists or op.startswith(("StringNot", "ArnNot", "NumericNotEquals"))
    test = _OPERATORS.get(op)
    if test is None:
        return False  # an operator we do not know never grants anything
    if qualifier == "ForAllValues":
        return all(any(test(a, e) for e in expected) for a in actual)
    negated = "Not" in op
    if negated:
        return all(test(a, e) for a in actual for e in expected)
    return any(test(a, e) for a in actual for e in expected)


def _context_value(context: Mapping[str, list[str]], key: str) -> list[str] | None:
    for name, values in context.items():
        if name.lower() == key.lower():
            return values
    return None


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")


_OPERATORS: dict[str, Any] = {
    "StringEquals": lambda a, e: a == e,
    "StringNotEquals": lambda a, e: a != e,
    "StringEqualsIgnoreCase": lambda a, e: a.lower() == e.lower(),
    "StringNotEqualsIgnoreCase": lambda a, e: a.lower() != e.lower(),
    "StringLike": lambda a, e: _glob(e, a),
    "StringNotLike": lambda a, e: not _glob(e, a),
    "ArnEquals": lambda a, e: _glob(e, a),
    "ArnLike": lambda a, e: _glob(e, a),
    "ArnNotEquals": lambda a, e: not _glob(e, a),
    "ArnNotLike": lambda a, e: not _glob(e, a),
    "Bool": lambda a, e: a.lower() == e.lower(),
    "NumericEquals": lambda a, e: _number(a) == _number(e),
    "NumericNotEquals": lambda a, e: _number(a) != _number(e),
    "NumericLessThan": lambda a, e: _number(a) < _number(e),
    "NumericLessThanEquals": lambda a, e: _number(a) <= _number(e),
    "NumericGreaterThan": lambda a, e: _number(a) > _number(e),
    "NumericGreaterThanEquals": lambda a, e: _number(a) >= _number(e),
}
