"""The dense gated MLP: down(act(gate(x)) * up(x)), gate/up packed or separate."""

from __future__ import annotations

from dataclasses import dataclass

from builder.kit.blocks.emitter import Emitter
from builder.kit.graph import MS_DOMAIN
from builder.kit.layout import PackGroup

ACTIVATIONS = ("silu", "gelu_tanh")
# config.json hidden_act values -> the kit's activation that computes them (transformers' ACT2FN:
# gelu_new and gelu_pytorch_tanh are both the tanh approximation).
KIT_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def activation(em: Emitter, kind: str, x: str, name: str) -> str:
    """silu in the layout's form (QuickGelu alpha=1 is exactly SiLU, one node; or Sigmoid * x),
    or gelu_tanh as com.microsoft FastGelu (Gemma's gelu_pytorch_tanh)."""
    g = em.graph
    if kind == "gelu_tanh":
        return g.op("FastGelu", [x], f"{name}/FastGelu", domain=MS_DOMAIN)
    if kind != "silu":  # any other kind was written as SiLU: a model computing something else
        raise ValueError(f"activation {kind!r}: the kit writes {', '.join(ACTIVATIONS)}; override DenseMLP.activation")
    if em.plan.layout.silu == "quickgelu":
        return g.op("QuickGelu", [x], f"{name}/QuickGelu", domain=MS_DOMAIN, alpha=1.0)
    return g.op("Mul", [x, g.op("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/Mul")


@dataclass(frozen=True)
class DenseMLP:
    act: str = "silu"  # silu | gelu_tanh; for another, a subclass overrides activation()
    prefix: str = "mlp"
    bias: bool = False  # gate/up/down_proj biases, each added after its projection

    def __post_init__(self):
        if self.act not in ACTIVATIONS and type(self).activation is DenseMLP.activation:
            raise ValueError(
                f"DenseMLP(act={self.act!r}): the kit writes {', '.join(ACTIVATIONS)}; for another "
                "activation, subclass DenseMLP and override activation(em, x, name)"
            )

    def activation(self, em: Emitter, x: str, name: str) -> str:
        """act(gate): the node(s) that apply this MLP's activation to x."""
        return activation(em, self.act, x, name)

    def modules(self, i: int) -> list[str]:
        return [f"model.layers.{i}.{self.prefix}.{p}_proj" for p in ("gate", "up", "down")]

    def pack_groups(self, i: int) -> list[PackGroup]:
        return [
            PackGroup(
                f"model.layers.{i}.{self.prefix}.gate_up_proj",
                tuple(f"model.layers.{i}.{self.prefix}.{p}_proj" for p in ("gate", "up")),
                "mlp",
            )
        ]

    def __call__(self, em: Emitter, i: int, x: str, size: int | None = None, base: str | None = None) -> str:
        """size: the intermediate size (default: the spec's); base: node name prefix."""
        s, g = em.spec, em.graph
        inter = size or s.intermediate_size
        base = base or f"/model/layers.{i}/mlp"
        names = [em.weight(i, f"{self.prefix}.{p}_proj.weight") for p in ("gate", "up")]
        shapes = [(inter, s.hidden_size)] * 2
        fmts = [em.fmt(i, f"{self.prefix}.{p}_proj") for p in ("gate", "up")]
        biases = [em.weight(i, f"{self.prefix}.{p}_proj.bias") for p in ("gate", "up", "down")] if self.bias else None
        if em.plan.packed(f"model.layers.{i}.{self.prefix}.gate_up_proj"):
            gate_up = em.proj.matmul(x, f"{base}/gate_up_proj", names, shapes, fmts[0], biases and biases[:2])
            gate, up = g.node(
                "Split", [gate_up, g.constant([inter] * 2)], f"{base}/gate_up_proj/Split", outputs=2, axis=-1
            )
        else:
            gate, up = (
                em.proj.matmul(x, f"{base}/{p}_proj", [n], [sh], f, biases and [biases[j]])
                for j, (p, n, sh, f) in enumerate(zip(("gate", "up"), names, shapes, fmts))
            )
        hidden = g.op("Mul", [self.activation(em, gate, f"{base}/act_fn"), up], f"{base}/Mul")
        return em.proj.matmul(
            hidden,
            f"{base}/down_proj",
            [em.weight(i, f"{self.prefix}.down_proj.weight")],
            [(s.hidden_size, inter)],
            em.fmt(i, f"{self.prefix}.down_proj"),
            biases and biases[2:],
        )
