"""JSONata in Step Functions, evaluated by `jsonata-python` (a maintained port of jsonata-js).

moto 5.2.5 ships LocalStack's JSONata support with the evaluator stubbed out (it ran jsonata-java
in a JVM): every `{% %}` expression failed with `TypeError('NoneType' object is not callable)`.
moto also evaluated by *text*: each expression was wrapped in `($states:={...};$var:=...;expr)`
with the whole state input serialised into the source, so every evaluation parsed the input
again as JSONata and strings with quotes broke the source.

Here an expression is parsed once (cached by its text) and evaluated with bindings: `$states`
(input, context, result, errorOutput), the workflow variables (`Assign`) and the functions Step
Functions adds to JSONata (`$partition`, `$range`, `$hash`, `$random`, `$uuid`, `$parse`,
`$base64encode`, `$base64decode`). The same path serves variable references in JSONPath states
(`"x.$": "$myVariable.field"`). Errors are those of AWS: `States.QueryEvaluationError` with an
`EvaluationFailed` event, for an expression that throws, returns nothing, returns a function, or
(in a Choice `Condition`) returns something other than a boolean.

At CreateStateMachine, a JSONata state with JSONPath fields (`Parameters`, `InputPath`,
`ResultPath`, ...) and a JSONPath state with JSONata fields (`Output`, `Arguments`, `Items`) are
refused with `InvalidDefinition` (SCHEMA_VALIDATION_FAILED), as AWS refuses them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import hashlib
import json
import math
import random
import threading
import uuid
from typing import Any

from jsonata import jsonata as jsonata_engine
from jsonata import utils as jsonata_utils

from .patching import once

EXPRESSION_CACHE_SIZE = 4096

# $hash algorithms as AWS names them.
HASH_ALGORITHMS = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
}


class QueryEvaluationError(Exception):
    """A JSONata expression that cannot be evaluated, with the reason AWS would give."""


# --- the Step Functions functions ----------------------------------------------------------


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise QueryEvaluationError(message)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == int(value)


def sfn_partition(array: Any, chunk_size: Any) -> list[list[Any]]:
    """`$partition(array, size)`: the array cut into chunks of `size` (the last may be shorter)."""
    items = list(array) if isinstance(array, list) else [array]
    _require(
        _is_integer(chunk_size) and chunk_size > 0, "$partition: size must be a positive integer"
    )
    size = int(chunk_size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def sfn_range(start: Any, end: Any, step: Any) -> list[int | float]:
    """`$range(start, end, step)`: from start to end inclusive, by step."""
    for name, value in (("start", start), ("end", end), ("step", step)):
        _require(_is_integer(value), f"$range: {name} must be an integer")
    _require(step != 0, "$range: step must not be 0")
    start, end, step = int(start), int(end), int(step)
    return list(range(start, end + (1 if step > 0 else -1), step))


def sfn_hash(data: Any, algorithm: Any) -> str:
    """`$hash(data, algorithm)`: the hex digest of a string."""
    _require(isinstance(data, str), "$hash: the data to hash must be a string")
    name = HASH_ALGORITHMS.get(algorithm) if isinstance(algorithm, str) else None
    _require(
        name is not None,
        f"$hash: the algorithm must be one of {', '.join(HASH_ALGORITHMS)}",
    )
    return hashlib.new(str(name), data.encode("utf-8")).hexdigest()


def sfn_random(seed: Any = None) -> float:
    """`$random([seed])`: a number in [0, 1); the same seed gives the same number."""
    if seed is None:
        return random.random()
    _require(_is_integer(seed), "$random: the seed must be an integer")
    return random.Random(int(seed)).random()


def sfn_uuid() -> str:
    """`$uuid()`: a version 4 UUID."""
    return str(uuid.uuid4())


def sfn_parse(text: Any) -> Any:
    """`$parse(jsonString)`: the JSON value a string holds."""
    _require(isinstance(text, str), "$parse: the argument must be a string")
    try:
        return _to_jsonata(json.loads(text))
    except json.JSONDecodeError as error:
        raise QueryEvaluationError(f"$parse: the string is not valid JSON ({error})") from None


def sfn_base64encode(text: Any) -> str:
    """`$base64encode(string)`: the UTF-8 bytes of a string, base64-encoded."""
    _require(isinstance(text, str), "$base64encode: the argument must be a string")
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def sfn_base64decode(text: Any) -> str:
    """`$base64decode(string)`: the UTF-8 string a base64 string encodes."""
    _require(isinstance(text, str), "$base64decode: the argument must be a string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise QueryEvaluationError("$base64decode: the argument is not base64 of UTF-8") from None


def sfn_no_eval(*_: Any) -> None:
    """`$eval` is the one JSONata 2.0.6 function Step Functions does not offer."""
    raise QueryEvaluationError("$eval is not available in Step Functions: use $parse")


SFN_FUNCTIONS = {
    "partition": sfn_partition,
    "range": sfn_range,
    "hash": sfn_hash,
    "random": sfn_random,
    "uuid": sfn_uuid,
    "parse": sfn_parse,
    "base64encode": sfn_base64encode,
    "base64decode": sfn_base64decode,
    "eval": sfn_no_eval,
}
_SFN_BINDINGS = {name: jsonata_engine.Jsonata.JLambda(fn) for name, fn in SFN_FUNCTIONS.items()}


# --- values in and out ---------------------------------------------------------------------


def _to_jsonata(value: Any) -> Any:
    """A JSON value as the engine reads it.

    The engine reads None inside arrays and objects as JSON null, but a None value as a whole
    is undefined: only that one needs the engine's NULL_VALUE. Nothing is copied (the engine
    does not mutate its input, and results are copied by `_to_json`), so an expression costs
    the same on a 1 KB and a 1 MB state input.
    """
    return jsonata_utils.Utils.NULL_VALUE if value is None else value


class UnsupportedResult(Exception):
    """The expression returned something that is not JSON (a function)."""


def _to_json(value: Any) -> Any:
    """The engine's result as a plain JSON value (fresh lists and dicts, never shared)."""
    if value is jsonata_utils.Utils.NULL_VALUE or value is None:
        return None
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float):
            if not math.isfinite(value):
                raise UnsupportedResult
            if value.is_integer() and abs(value) < 2**53:
                return int(value)  # JSONata numbers are doubles: 5.0 prints as 5, as on AWS
        return value
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    raise UnsupportedResult


# --- evaluation ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=EXPRESSION_CACHE_SIZE)
def compile_expression(expression: str) -> Any:
    """The parsed expression (raises the engine's error for bad syntax)."""
    compiled = jsonata_engine.Jsonata(expression)
    # Null and undefined stay apart: `$states.input.missing` is undefined, `{"a": null}.a` null.
    compiled.set_output_convert_nulls(False)
    return compiled


_current = jsonata_engine.Jsonata.CURRENT
_expression_lock = threading.Lock()


def evaluate(expression: str, bindings: dict[str, Any]) -> Any:
    """Evaluate one expression with `$name` bindings; the engine's raw result.

    Raises QueryEvaluationError with the engine's message for any failure.
    """
    try:
        with _expression_lock:
            template = compile_expression(expression)
        # The engine keeps per-evaluation state on the instance its thread-local CURRENT names:
        # a shallow copy per evaluation lets threads share one parsed tree safely.
        instance = copy.copy(template)
        previous = getattr(_current, "jsonata", None)
        _current.jsonata = instance
        try:
            return instance.evaluate(None, {**_SFN_BINDINGS, **bindings})
        finally:
            _current.jsonata = previous
    except QueryEvaluationError:
        raise
    except RecursionError:
        raise QueryEvaluationError("Stack overflow: the expression recurses too deeply") from None
    except Exception as error:  # the engine raises JException and plain Python errors alike
        raise QueryEvaluationError(_message(error)) from None


def _message(error: Exception) -> str:
    code = getattr(error, "error", None)
    text = str(error) or type(error).__name__
    if isinstance(error, ZeroDivisionError):
        code, text = "D1001", "Number out of range"
    return f"{code}: {text}" if isinstance(code, str) and code else text


def states_bindings(env: Any, with_states: bool) -> dict[str, Any]:
    """`$states` (JSONata states only) and the variables in scope, as the engine reads them."""
    store = env.variable_store
    bindings = {
        name: _to_jsonata(value)
        for scope in (store._outer_scope, store._inner_scope)
        for name, value in scope.items()
    }
    if with_states:
        bindings["states"] = _to_jsonata(env.states._states_data)
    return bindings


# --- moto integration ----------------------------------------------------------------------


# The ASL fields that hold expressions; moto names fields after its component classes
# (`ArgumentsJSONataTemplateValueObject`, `AssignDecl`, ...), which start with these.
ASL_FIELDS = (
    "Arguments", "Output", "Assign", "Condition", "ItemSelector", "Items", "ItemBatcher",
    "TimeoutSeconds", "HeartbeatSeconds", "Seconds", "Timestamp", "Error", "Cause",
    "MaxConcurrency", "MaxItems", "ToleratedFailureCount", "ToleratedFailurePercentage",
    "Credentials",
)  # fmt: skip


def asl_field(component_name: str | None) -> str | None:
    """The ASL field a moto component name stands for, if any."""
    for field in ASL_FIELDS:
        if component_name and component_name.startswith(field):
            return field
    return None


def _query_error(env: Any, cause: str) -> Exception:
    """The FailureEventException moto's interpreter turns into States.QueryEvaluationError."""
    from moto.stepfunctions.parser.api import EvaluationFailedEventDetails, HistoryEventType
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

    error_name = StatesErrorName(typ=StatesErrorNameType.StatesQueryEvaluationError)
    details = EvaluationFailedEventDetails(cause=cause, error=error_name.error_name)
    field = asl_field(env.next_field_name)
    if field:
        details["location"] = field
    exception = FailureEventException(
        failure_event=FailureEvent(
            env=env,
            error_name=error_name,
            event_type=HistoryEventType.EvaluationFailed,
            event_details=EventDetails(evaluationFailedEventDetails=details),  # type: ignore[typeddict-item]
        )
    )
    # As moto's own validations: the EvaluationFailed event carries the decorated cause.
    env.event_manager.add_event(
        context=env.event_history_context,
        event_type=HistoryEventType.EvaluationFailed,
        event_details=EventDetails(  # type: ignore[typeddict-item]
            evaluationFailedEventDetails=exception.get_evaluation_failed_event_details()
        ),
    )
    return exception


def evaluate_in_state(env: Any, expression: str, jsonata_state: bool = True) -> Any:
    """Evaluate an expression of the running state; failures as AWS reports them.

    In a JSONPath state only variables are in scope and an undefined result is null, as moto has it.
    """
    try:
        raw = evaluate(expression, states_bindings(env, jsonata_state))
    except QueryEvaluationError as error:
        field = asl_field(env.next_field_name)
        where = f" specified for the field '{field}'" if field else ""
        raise _query_error(
            env,
            f"The JSONata expression '{expression}'{where} threw an error during evaluation."
            f" {error}",
        ) from None
    if raw is None and jsonata_state:
        raise _query_error(
            env, f"The JSONata expression '{expression}' returned nothing (undefined)."
        )
    try:
        return _to_json(raw)
    except UnsupportedResult:
        raise _query_error(
            env, f"The JSONata expression '{expression}' returned an unsupported result type."
        ) from None


@once
def install() -> None:
    """Give moto's interpreter this evaluator (idempotent)."""
    from moto.stepfunctions.parser.asl.component.common.string import string_expression

    def string_jsonata_eval(self: Any, env: Any) -> None:
        env.stack.append(evaluate_in_state(env, self.expression))

    def variable_sample_eval(self: Any, env: Any) -> None:
        from moto.stepfunctions.parser.asl.component.common.query_language import (
            QueryLanguageMode,
        )

        jsonata_state = self.query_language_mode == QueryLanguageMode.JSONata
        env.stack.append(evaluate_in_state(env, self.expression, jsonata_state))

    string_expression.StringJSONata._eval_body = string_jsonata_eval  # type: ignore[method-assign]
    string_expression.StringVariableSample._eval_body = variable_sample_eval  # type: ignore[method-assign]
    install_validation()
    _keep_field_names(string_expression)
    _boolean_conditions()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _boolean_conditions() -> None:
    """A Choice `Condition` that is not a boolean is a query error, not a runtime crash."""
    from moto.stepfunctions.parser.asl.component.state.choice.comparison import comparison

    def condition_eval(self: Any, env: Any) -> None:
        self.string_jsonata.eval(env=env)
        result = env.stack[-1]
        if not isinstance(result, bool):
            expression = self.string_jsonata.expression
            raise _query_error(
                env,
                f"The JSONata expression '{expression}' specified for the field 'Condition' "
                f"returned an unexpected result type: expected boolean, got {_json_type(result)}.",
            )

    comparison.ConditionStringJSONata._eval_body = condition_eval  # type: ignore[method-assign]


def _keep_field_names(string_expression: Any) -> None:
    """Template values, bindings and expressions keep the name of the ASL field holding them."""
    from moto.stepfunctions.parser.asl.component.common.assign import (
        assign_template_binding,
        assign_template_value,
    )
    from moto.stepfunctions.parser.asl.component.common.jsonata import (
        jsonata_template_binding,
        jsonata_template_value,
    )

    pending: list[type] = [
        jsonata_template_value.JSONataTemplateValue,
        jsonata_template_binding.JSONataTemplateBinding,
        assign_template_value.AssignTemplateValue,
        assign_template_binding.AssignTemplateBinding,
        string_expression.StringJSONata,
    ]
    while pending:
        cls = pending.pop()
        cls._field_name = _no_field_name  # type: ignore[attr-defined]
        pending.extend(cls.__subclasses__())


def _no_field_name(self: Any) -> None:
    return None


# --- create-time validation ----------------------------------------------------------------

# Fields only JSONata states have; moto accepted them in JSONPath states and ignored the mode.
JSONATA_ONLY_VISITORS = ("visitOutput_decl", "visitItems_array", "visitItems_jsonata")


def install_validation() -> None:
    """Reject what AWS rejects at CreateStateMachine: fields of the other query language."""
    from moto.stepfunctions.parser.asl.component.common.query_language import QueryLanguageMode
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    original_init = Preprocessor.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        # moto keeps the query-language scope stack on the class: one definition that failed
        # to parse left its scope behind for every later one, and threads shared it.
        self._query_language_per_scope = []

    def raise_if_query_language_is_not(self: Any, query_language_mode: Any, ctx: Any) -> None:
        if self._is_query_language(query_language_mode=query_language_mode):
            return
        field = ctx.getText().split(":", 1)[0].strip('"')
        if query_language_mode == QueryLanguageMode.JSONPath:
            raise ValueError(
                f"SCHEMA_VALIDATION_FAILED: The field '{field}' is not supported in a JSONata "
                "state; use Arguments, Output and {% %} expressions"
            )
        raise ValueError(
            f"SCHEMA_VALIDATION_FAILED: The field '{field}' is only supported in a JSONata state "
            '(set "QueryLanguage": "JSONata")'
        )

    _readable_invalid_definition()
    Preprocessor.__init__ = init  # type: ignore[method-assign]
    Preprocessor._raise_if_query_language_is_not = raise_if_query_language_is_not  # type: ignore[method-assign]
    for name in JSONATA_ONLY_VISITORS:
        setattr(Preprocessor, name, _requiring_jsonata(getattr(Preprocessor, name)))


def _readable_invalid_definition() -> None:
    """InvalidDefinition with AWS's message shape, not moto's dump of the whole definition."""
    from moto.stepfunctions.parser.api import InvalidDefinition
    from moto.stepfunctions.parser.asl.parse.asl_parser import (
        AmazonStateLanguageParser,
        ASLParserException,
    )
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    def validate_definition(definition: str) -> None:
        try:
            AmazonStateLanguageParser.parse(definition)
        except ASLParserException as error:
            reason = "; ".join(error.errors) or "the definition is not valid ASL"
            raise InvalidDefinition(
                f"Invalid State Machine Definition: 'SCHEMA_VALIDATION_FAILED: {reason}'"
            ) from None
        except Exception as error:  # the preprocessor's ValueErrors name the offending field
            raise InvalidDefinition(f"Invalid State Machine Definition: '{error}'") from None

    StepFunctionsParserBackend._validate_definition = staticmethod(validate_definition)  # type: ignore[method-assign]


def _requiring_jsonata(visit: Any) -> Any:
    from moto.stepfunctions.parser.asl.component.common.query_language import QueryLanguageMode

    @functools.wraps(visit)
    def checked(self: Any, ctx: Any) -> Any:
        self._raise_if_query_language_is_not(query_language_mode=QueryLanguageMode.JSONata, ctx=ctx)
        return visit(self, ctx)

    return checked
