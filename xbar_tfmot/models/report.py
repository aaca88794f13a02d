"""The crossbar report: per layer and in total, how many crossbars a model takes.

Works on tf_keras and Keras 3 models (wrapped or not) without importing TFMOT. Counts come
from the kernels' actual zeros (a wrapper's mask applied), so the same report serves a dense
model, a model being pruned and a stripped one. A partly mapped layer (SeparableConv2D) is
counted by the kernel crossbars hold (its pointwise kernel) and says which part stays digital.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from xbar_tfmot.core.geometry import Counts, LayerGeometry
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """One layer: its tiling and counts, or why it is not mapped."""

  name: str
  type: str
  kernel_shape: tuple[int, ...] | None
  geometry: LayerGeometry | None = None
  counts: Counts | None = None
  reason: str | None = None  # set for layers with weights that are not mapped
  mapped_kernel: str | None = None  # the attribute crossbars hold, for a mapped layer
  digital: str | None = None  # what of a partly mapped layer stays digital, and why

  @property
  def mapped(self) -> bool:
    return self.counts is not None

  def to_dict(self) -> dict[str, Any]:
    out: dict[str, Any] = {"name": self.name, "type": self.type,
                           "kernel_shape": list(self.kernel_shape or ())}
    if not self.mapped:
      return {**out, "mapped": False, "reason": self.reason}
    g, c = self.geometry, self.counts
    return {**out, "mapped": True, "mapped_kernel": self.mapped_kernel,
            "digital_part": self.digital, "kin": g.kin, "kout": g.kout, "g_in": g.g_in, "g_out": g.g_out,
            "replicas": g.replicas, **dataclasses.asdict(c),
            "utilization_blocks": c.utilization(c.blocks),
            "utilization_packed": c.utilization(c.packed)}


@dataclasses.dataclass(frozen=True)
class CrossbarReport:
  """Per-layer reports and totals of one model on one `CrossbarSpec`."""

  model_name: str
  spec: CrossbarSpec
  layers: tuple[LayerReport, ...]

  @property
  def mapped(self) -> tuple[LayerReport, ...]:
    return tuple(r for r in self.layers if r.mapped)

  @property
  def unmapped(self) -> tuple[LayerReport, ...]:
    return tuple(r for r in self.layers if not r.mapped)

  @property
  def partly_mapped(self) -> tuple[LayerReport, ...]:
    """Mapped layers of which a part (a separable convolution's depthwise kernel) is digital."""
    return tuple(r for r in self.mapped if r.digital)

  def total(self, field: str) -> int:
    """Sum of a `Counts` field (`dense`, `blocks`, `packed`, `nonzero_weights`) over layers."""
    return sum(getattr(r.counts, field) for r in self.mapped)

  def reduction(self, field: str) -> float:
    """Fraction of the dense crossbars saved by the `blocks` or `packed` count."""
    dense = self.total("dense")
    return 1.0 - self.total(field) / dense if dense else 0.0

  def utilization(self, field: str) -> float:
    cells = sum(getattr(r.counts, field) * r.counts.cells_per_crossbar for r in self.mapped)
    return self.total("nonzero_weights") / cells if cells else 0.0

  def to_dict(self) -> dict[str, Any]:
    return {
        "model": self.model_name,
        "spec": self.spec.to_dict(),
        "layers": [r.to_dict() for r in self.layers],
        "totals": {
            "dense": self.total("dense"),
            "blocks": self.total("blocks"),
            "packed": self.total("packed"),
            "reduction_blocks": self.reduction("blocks"),
            "reduction_packed": self.reduction("packed"),
            "utilization_blocks": self.utilization("blocks"),
            "utilization_packed": self.utilization("packed"),
        },
    }

  def format_table(self) -> str:
    head = ("layer", "type", "kernel", "Kin", "Kout", "dense", "xbar", "col+rc", "util")
    rows = [head]
    for r in self.mapped:
      g, c = r.geometry, r.counts
      rows.append((r.name, r.type, "x".join(map(str, r.kernel_shape)), str(g.kin), str(g.kout),
                   str(c.dense), str(c.blocks), str(c.packed), f"{c.utilization(c.packed):.1%}"))
    rows.append(("total", "", "", "", "", str(self.total("dense")), str(self.total("blocks")),
                 str(self.total("packed")), f"{self.utilization('packed'):.1%}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"Crossbar report: {self.model_name} on {self.spec}"]
    for i, row in enumerate(rows):
      if i in (1, len(rows) - 1):
        lines.append("  ".join("-" * w for w in widths))
      lines.append("  ".join(cell.ljust(w) if j < 3 else cell.rjust(w)
                             for j, (cell, w) in enumerate(zip(row, widths))))
    lines.append(
        f"reduction: crossbar grain {self.reduction('blocks'):.1%}, column grain with "
        f"recombination {self.reduction('packed'):.1%}  (xbar = non-zero blocks, col+rc = "
        f"columns packed per input group)")
    for r in self.partly_mapped:
      lines.append(f"partly mapped: {r.name} ({r.type}): {r.digital}")
    for r in self.unmapped:
      lines.append(f"not mapped: {r.name} ({r.type}): {r.reason}")
    return "\n".join(lines)

  __str__ = format_table


def crossbar_report(model: Any, spec: CrossbarSpec) -> CrossbarReport:
  """Counts every layer of `model` on `spec`; layers with weights that cannot map are listed.

  A layer's `kernel_shape` is that of the kernel crossbars hold (a separable convolution's
  pointwise kernel); `mapped_kernel` names it and `digital` says what stays digital.
  """
  out = []
  for layer in introspection.iter_layers(model):
    inner = introspection.unwrap(layer)
    attribute = introspection.kernel_attribute(inner)
    kernel = getattr(inner, attribute, None)
    shape = tuple(int(d) for d in kernel.shape) if kernel is not None else None
    base = {"name": inner.name, "type": type(inner).__name__, "kernel_shape": shape}
    reason = introspection.unmapped_reason(inner)
    if reason is None and kernel is None:
      continue
    if reason is None:
      try:
        geometry = introspection.geometry_of(inner, spec)
      except ValueError as err:
        reason = str(err)
      else:
        out.append(LayerReport(**base, geometry=geometry,
                               counts=geometry.counts(introspection.effective_kernel(layer)),
                               mapped_kernel=attribute, digital=introspection.digital_part(inner)))
        continue
    out.append(LayerReport(**base, reason=reason))
  return CrossbarReport(getattr(model, "name", "model"), spec, tuple(out))
