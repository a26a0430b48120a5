"""Compile a graph and a learner into pure JAX functions over a state pytree.

The network state is a dict ``{group name: {field name: array}}``. Each group's fields are its
parameters (from the node kind), the stored forward input ``input`` and, for the loss group,
``target`` (shape ``(B, ...)``), the learner's ``carry`` when it has one, and any extra state of
the kind. The structure is fixed by the graph, so every function here works under `jax.jit`,
`jax.vmap` and `jax.grad`.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mplp.graphcore.errors import GraphError
from mplp.graphcore.graph import BackwardStep, Schedule, build_schedule, validate_graph
from mplp.graphcore.kinds import Fields, FieldSpec, NodeKind
from mplp.graphcore.learning import GroupInfo, Learner, LearnerParams
from mplp.graphcore.schema import Graph

Array = jax.Array
State = dict[str, Fields]
Metrics = dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """A graph compiled with a learner: pure functions for init, forward and learning.

    Create it with `compile_graph`. Instances compare and hash by identity, so a bound method
    such as ``jax.jit(program.step)`` is traced once and reused.
    """

    graph: Graph
    learner: Learner
    kinds: Mapping[str, NodeKind]
    schedule: Schedule
    field_specs: Mapping[str, dict[str, FieldSpec]]

    @property
    def groups(self) -> tuple[GroupInfo, ...]:
        """Every group with its kind, in the graph's order."""
        return tuple(self._info(group.name) for group in self.graph.groups)

    @property
    def learning_groups(self) -> tuple[GroupInfo, ...]:
        """The groups that run a learner in the backward pass, in schedule order."""
        by_name = {info.group.name: info for info in self.groups}
        return tuple(by_name[step.group] for step in self.schedule.backward)

    def state_fields(self, batch_size: int) -> dict[str, dict[str, FieldSpec]]:
        """Describe every state field: its concrete shape and its role."""
        return {
            group: {
                name: FieldSpec(_resolve(spec.shape, batch_size), spec.role)
                for name, spec in specs.items()
            }
            for group, specs in self.field_specs.items()
        }

    def init(self, key: Array, batch_size: int) -> State:
        """Initialise the network state for minibatches of ``batch_size`` examples.

        Parameters come from each node kind's ``init_params``; stored values and learner
        carries start at zero.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise GraphError(f"batch_size {batch_size!r} is invalid: pass a positive integer")
        batch_size = int(batch_size)
        if batch_size < 1:
            raise GraphError(f"batch_size {batch_size!r} is invalid: pass a positive integer")

        keys = jax.random.split(key, len(self.graph.groups))
        state: State = {}
        for group_key, info in zip(keys, self.groups, strict=True):
            param_key, extra_key = jax.random.split(group_key)
            fields = dict(info.kind.init_params(param_key, info.group))
            fields.update(info.kind.init_state(extra_key, info.group))
            for name, spec in self.field_specs[info.group.name].items():
                if spec.role == "stored":
                    fields[name] = jnp.zeros(_resolve(spec.shape, batch_size), jnp.float32)
            if "carry" in self.field_specs[info.group.name]:
                carry = self.learner.init_carry(info, batch_size)
                assert carry is not None  # the field exists only for learners with a carry
                fields["carry"] = carry
            state[info.group.name] = fields
        return state

    def reset(self, state: State, batch_size: int) -> State:
        """Return ``state`` with the same parameters and fresh stored values and carries.

        Use it to start a new inner run, or to change the minibatch size of a network.
        """
        fresh = self.init(jax.random.key(0), batch_size)
        kept = {"parameter", "state", "statistic"}
        specs = self.state_fields(batch_size)
        return {
            group: {
                name: (state[group][name] if specs[group][name].role in kept else value)
                for name, value in fields.items()
            }
            for group, fields in fresh.items()
        }

    def init_learner(self, key: Array) -> LearnerParams:
        """Initialise the learner's parameters for this graph."""
        return self.learner.init(key, self.learning_groups)

    def parameters(self, state: State) -> dict[str, Fields]:
        """Return the trainable parameters, ``{group: {field: array}}``, groups without any
        omitted."""
        result = {}
        for group, fields in state.items():
            specs = self.field_specs[group]
            params = {n: v for n, v in fields.items() if specs[n].role == "parameter"}
            if params:
                result[group] = params
        return result

    def replace_parameters(self, state: State, parameters: Mapping[str, Fields]) -> State:
        """Return ``state`` with the given parameters swapped in, checking names and shapes."""
        current = self.parameters(state)
        new_state = {group: dict(fields) for group, fields in state.items()}
        for group, fields in parameters.items():
            if group not in current:
                reason = "it has no parameters" if group in state else "no such group"
                raise GraphError(
                    f"cannot replace parameters of '{group}': {reason}; groups with "
                    f"parameters: {', '.join(current)}"
                )
            for name, value in fields.items():
                if name not in current[group]:
                    raise GraphError(f"group '{group}' has no parameter '{name}'")
                expected = current[group][name].shape
                if jnp.shape(value) != expected:
                    raise GraphError(
                        f"parameter '{group}.{name}' must have shape {expected}, "
                        f"got {jnp.shape(value)}"
                    )
                new_state[group][name] = jnp.asarray(value, current[group][name].dtype)
        return new_state

    def apply(self, state: State, x: Array) -> Array:
        """Run the forward pass and return the output that feeds the loss, ``(B, *out)``."""
        self._check_input(x, state, check_batch=False)
        values = self._forward(state, x)
        return values[self.schedule.output_group]

    def loss(self, state: State, x: Array, target: Array) -> Array:
        """Return the mean over examples of the per-example loss (the loss group's per-element
        losses summed over its nodes)."""
        self._check_input(x, state, check_batch=False)
        self._check_target(target, x.shape[0])
        prediction = self._forward(state, x)[self.schedule.output_group]
        loss_kind = self.kinds[self.schedule.loss_group]
        elementwise = loss_kind.apply(
            self._params(state, self.schedule.loss_group), prediction, target
        )
        return _per_example(elementwise).mean()

    def step(
        self, learner_params: LearnerParams, state: State, x: Array, target: Array
    ) -> tuple[State, Metrics]:
        """Run one learning step: forward, loss, backward and updates.

        Args:
            learner_params: The learner's parameters (`init_learner`).
            state: The network state (`init`).
            x: One minibatch of inputs, ``(B, *in)`` with ``B`` the state's batch size.
            target: The matching targets, ``(B, *target)``.

        Returns:
            The new state and metrics: ``loss``, the mean per-example loss of this minibatch
            before the update, and ``learner``, the learner's diagnostics per group.
        """
        self._check_input(x, state, check_batch=True)
        self._check_target(target, x.shape[0])

        state = {group: dict(fields) for group, fields in state.items()}
        values = self._forward(state, x, target, store=state)

        elementwise_loss = values[self.schedule.loss_group]
        metrics: Metrics = {"loss": _per_example(elementwise_loss).mean(), "learner": {}}

        inbox: dict[str, list[Array]] = {step.group: [] for step in self.schedule.backward}
        inbox[self.schedule.loss_group] = [elementwise_loss[..., None]]
        for step in self.schedule.backward:
            message_out, aux = self._backward_group(learner_params, state, step, inbox)
            for receiver in step.receivers:
                inbox.setdefault(receiver, []).append(message_out)
            if aux:
                metrics["learner"][step.group] = aux
            self._run_reflexive(state, step.group, step.reflexive)

        for group, arrow in self.schedule.reflexive_only:
            self._run_reflexive(state, group, (arrow,))
        return state, metrics

    def run(
        self, learner_params: LearnerParams, state: State, xs: Array, targets: Array
    ) -> tuple[State, Metrics]:
        """Run ``T`` learning steps as one `jax.lax.scan`.

        Args:
            xs: ``(T, B, *in)``, one minibatch per step.
            targets: ``(T, B, *target)``.

        Returns:
            The final state and the per-step metrics stacked along a leading axis of size T.
        """
        if jnp.ndim(xs) < 2 or jnp.ndim(targets) < 2:
            raise GraphError(
                f"run expects stacked minibatches (T, B, ...), got xs {jnp.shape(xs)} and "
                f"targets {jnp.shape(targets)}; use step for a single minibatch"
            )
        if xs.shape[0] != targets.shape[0]:
            raise GraphError(
                f"xs has {xs.shape[0]} steps but targets has {targets.shape[0]}: "
                "pass one target minibatch per input minibatch"
            )

        def body(carried: State, batch: tuple[Array, Array]) -> tuple[State, Metrics]:
            return self.step(learner_params, carried, *batch)

        return jax.lax.scan(body, state, (xs, targets))

    # Internal steps.

    def _info(self, group: str) -> GroupInfo:
        specs = self.field_specs[group]
        parameters = tuple(name for name, spec in specs.items() if spec.role == "parameter")
        sends = any(step.group == group and step.receivers for step in self.schedule.backward)
        return GroupInfo(self.graph.group(group), self.kinds[group], parameters, sends)

    def _params(self, state: State, group: str) -> Fields:
        specs = self.field_specs[group]
        return {
            name: value for name, value in state[group].items() if specs[name].role == "parameter"
        }

    def _forward(
        self,
        state: State,
        x: Array,
        target: Array | None = None,
        store: State | None = None,
    ) -> dict[str, Array]:
        values = {self.schedule.input_group: x}
        for step in self.schedule.forward:
            kind = self.kinds[step.group]
            inputs = [values[source] for source in step.sources]
            summed = inputs[0]
            for extra in inputs[1:]:
                summed = summed + extra

            group_target = target if kind.is_loss else None
            if kind.is_loss and target is None:
                # Forward-only calls stop at the loss group's input.
                continue
            values[step.group] = kind.apply(self._params(state, step.group), summed, group_target)
            if store is not None:
                store[step.group]["input"] = summed
                if kind.is_loss:
                    store[step.group]["target"] = jnp.asarray(target, jnp.float32)
        return values

    def _backward_group(
        self,
        learner_params: LearnerParams,
        state: State,
        step: BackwardStep,
        inbox: dict[str, list[Array]],
    ) -> tuple[Array, dict[str, Array]]:
        info = self._info(step.group)
        message = _combine(inbox[step.group], step.aggregate_in)
        if message is None:
            # NOTE: a group whose senders sent nothing (empty fan-in) receives an exact zero
            # message rather than a mean over zero messages, which would be 0/0.
            out_shape = info.kind.output_shape(info.group)
            batch = state[step.group]["input"].shape[0]
            message = jnp.zeros((batch, *out_shape, self.learner.message_size), jnp.float32)

        fields, message_out, aux = self.learner.backward(
            learner_params, info, state[step.group], message, step.aggregate_out
        )
        state[step.group] = dict(fields)
        return message_out, aux

    def _run_reflexive(self, state: State, group: str, arrows: tuple[str, ...]) -> None:
        kind = self.kinds[group]
        for _ in arrows:
            assert kind.reflexive is not None  # checked by validate_graph
            state[group] = dict(kind.reflexive(self.graph.group(group), state[group]))

    def _check_input(self, x: Array, state: State, check_batch: bool) -> None:
        input_group = self.graph.group(self.schedule.input_group)
        expected = self.kinds[input_group.name].output_shape(input_group)
        shape = jnp.shape(x)
        if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected:
            raise GraphError(
                f"input x has shape {shape} but group '{input_group.name}' expects "
                f"(batch, {', '.join(map(str, expected))}); reshape the data"
            )
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise GraphError(
                f"input x has dtype {jnp.result_type(x)}: pass floating-point data "
                "(e.g. x.astype(jnp.float32))"
            )
        if check_batch:
            loss_fields = state[self.schedule.loss_group]
            batch = loss_fields["input"].shape[0]
            if shape[0] != batch:
                raise GraphError(
                    f"input x has batch size {shape[0]} but the state was initialised for "
                    f"{batch}; call program.reset(state, batch_size={shape[0]}) first"
                )

    def _check_target(self, target: Array, batch: int) -> None:
        loss = self.graph.group(self.schedule.loss_group)
        kind = self.kinds[loss.name]
        assert kind.target_shape is not None  # loss kinds define it
        expected = (batch, *kind.target_shape(loss))
        if tuple(jnp.shape(target)) != expected:
            raise GraphError(
                f"target has shape {jnp.shape(target)} but loss group '{loss.name}' expects "
                f"{expected}; one-hot encode class labels for classification losses"
            )
        if not jnp.issubdtype(jnp.result_type(target), jnp.floating):
            raise GraphError(
                f"target has dtype {jnp.result_type(target)}: pass floating-point targets"
            )


def compile_graph(
    graph: Graph, learner: Learner, kinds: Mapping[str, NodeKind] | None = None
) -> Program:
    """Validate ``graph``, derive its schedule and return the compiled `Program`.

    Args:
        graph: The graph to run.
        learner: The learning rule of the backward pass.
        kinds: Node kinds to use in addition to the registered ones, by name.

    Raises:
        GraphError: for an invalid graph, or a learner that cannot run on it.
    """
    resolved = validate_graph(graph, kinds)
    schedule = build_schedule(graph, resolved)
    if learner.exact_gradient:
        for arrow in graph.arrows:
            if arrow.kind == "backward" and arrow.aggregate != "sum":
                raise GraphError(
                    f"learner '{learner.name}' sends exact gradients, which add up over the "
                    f"fan-out, but backward arrow '{arrow.name}' aggregates with "
                    f"'{arrow.aggregate}': set aggregate='sum'"
                )

    learning = {step.group for step in schedule.backward}
    field_specs = {
        group.name: _field_specs(GroupInfo(group, resolved[group.name]), learner, learning)
        for group in graph.groups
    }
    return Program(
        graph=graph, learner=learner, kinds=resolved, schedule=schedule, field_specs=field_specs
    )


def _field_specs(info: GroupInfo, learner: Learner, learning: set[str]) -> dict[str, FieldSpec]:
    kind, group = info.kind, info.group
    specs: dict[str, FieldSpec] = {}
    for name, shape in _param_shapes(kind, group).items():
        specs[name] = FieldSpec(shape, "parameter")
    specs.update(kind.state_fields(group))
    if not kind.is_input:
        specs["input"] = FieldSpec(("batch", *kind.input_shape(group)), "stored")
    if kind.is_loss and kind.target_shape is not None:
        specs["target"] = FieldSpec(("batch", *kind.target_shape(group)), "stored")
    if group.name in learning:
        carry = learner.init_carry(info, 1)
        if carry is not None:
            specs["carry"] = FieldSpec(("batch", *carry.shape[1:]), "carry")
    return specs


def _param_shapes(kind: NodeKind, group: Any) -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(lambda key: kind.init_params(key, group), jax.random.key(0))
    return {name: tuple(value.shape) for name, value in shapes.items()}


def _resolve(shape: tuple[int | str, ...], batch_size: int) -> tuple[int, ...]:
    return tuple(batch_size if size == "batch" else int(size) for size in shape)


def _per_example(elementwise: Array) -> Array:
    return elementwise.reshape(elementwise.shape[0], -1).sum(axis=1)


def _combine(messages: list[Array], aggregate: str) -> Array | None:
    if not messages:
        return None
    total = messages[0]
    for message in messages[1:]:
        total = total + message
    if aggregate == "mean":
        total = total / len(messages)
    return total
