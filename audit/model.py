"""``ModelUnderAudit``: the audited classifier as the metrics see it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from robaudit.errors import MetricError, UsageError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``, so that attacks and metrics work in input space."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def as_logits(output: object) -> torch.Tensor:
    """The logits in a model's output (design §3): the output itself when it is a tensor, the
    first element of a tuple or list, or the ``logits`` of a dict or of an output object (as
    Hugging Face models return). Anything else is a :class:`UsageError` that says what came."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise UsageError(
        f"the model returned {type(output).__name__}; expected logits: a tensor, a tuple whose "
        "first element is one, or a dict or output object with a `logits` tensor")


class ModelUnderAudit:
    """Wraps an ``nn.Module`` classifier for the audit.

    ``network`` is the module the metrics differentiate (the user's model, preceded by
    :class:`Normalize` when the spec gives ``normalize``). ``features(x)`` is the representation
    g(x) of Ghorbani & Zou (2017, section 2): the output of the module named by ``features``, or
    by default the input of the last ``nn.Linear``, flattened to ``(batch, dim)``; a metric that
    needs it on a model without it (see :meth:`feature_site`) raises ``MetricError``.

    Use it as a context manager: inside, the network is in eval mode with its parameters frozen;
    on exit both are restored to what they were.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        input_range: tuple[float, float] = (0.0, 1.0),
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        features: str | None = None,
        device: torch.device | str = "cpu",
        name: str = "model",
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        self.module = module
        layers: list[nn.Module] = [module]
        if normalize is not None:
            layers.insert(0, Normalize(*normalize))
        self.network: nn.Module = (layers[0] if len(layers) == 1 else nn.Sequential(*layers))
        self.network.to(self.device)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        if features is not None:
            named = dict(module.named_modules())
            if features not in named:
                choices = ", ".join(n for n in named if n) or "(none)"
                raise UsageError(
                    f"features: no module named {features!r}; the model has: {choices}"
                )
        self._features_name = features
        self._site: tuple[nn.Module, bool] | None = None
        self._saved: tuple[bool, list[bool]] | None = None
        self._num_classes: int | None = None

    def feature_site(self) -> tuple[nn.Module, bool]:
        """The module whose output (False) or input (True) is g(x). Resolved when a metric
        first needs g(x), so that a model without one (a TorchScript model, a classifier with
        no nn.Linear) can still be audited by the metrics that need only its logits."""
        if self._site is None:
            if isinstance(self.module, torch.jit.ScriptModule):
                raise MetricError(
                    "this metric needs the feature layer g(x), taken with a forward hook, and "
                    "TorchScript models take no hooks; audit the nn.Module through "
                    "`model.factory` to use feature metrics"
                )
            if self._features_name is not None:
                self._site = (dict(self.module.named_modules())[self._features_name], False)
            else:
                linears = [m for m in self.module.modules() if isinstance(m, nn.Linear)]
                if not linears:
                    raise MetricError(
                        "this metric needs the feature layer g(x): the model has no nn.Linear, "
                        "whose input is the default g(x); name a module with `model.features` "
                        "(an exported program has no modules to name: audit the nn.Module "
                        "through `model.factory` to use feature metrics)"
                    )
                self._site = (linears[-1], True)
        return self._site

    @property
    def has_features(self) -> bool:
        """Whether g(x) is available (see :meth:`feature_site`)."""
        try:
            self.feature_site()
        except MetricError:
            return False
        return True

    # -- mode handling -------------------------------------------------------------------
    def __enter__(self) -> ModelUnderAudit:
        params = list(self.network.parameters())
        self._saved = (self.network.training, [p.requires_grad for p in params])
        self.network.eval()
        for p in params:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        training, grads = self._saved
        self.network.train(training)
        for p, g in zip(self.network.parameters(), grads, strict=True):
            p.requires_grad_(g)
        self._saved = None

    # -- the model's outputs ---------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits for a batch ``x`` in input space (see :func:`as_logits`)."""
        return as_logits(self.network(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels, without building a graph."""
        with torch.no_grad():
            return self.logits(x).argmax(dim=1)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g(x) flattened to ``(batch, dim)`` and the logits, from a single forward pass."""
        captured: list[torch.Tensor] = []
        with self._capture(captured):
            logits = self.logits(x)
        return captured[0].flatten(1), logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """g(x), the feature representation, flattened to ``(batch, dim)``."""
        return self.features_and_logits(x)[0]

    @contextmanager
    def _capture(self, out: list[torch.Tensor]) -> Iterator[None]:
        site, from_input = self.feature_site()
        if from_input:
            handle = site.register_forward_pre_hook(lambda _m, args: out.append(args[0]))
        else:
            handle = site.register_forward_hook(lambda _m, _args, output: out.append(output))
        try:
            yield
        finally:
            handle.remove()

    def num_classes(self, example: torch.Tensor) -> int:
        """The number of logits, found with one forward pass on ``example`` (cached)."""
        if self._num_classes is None:
            with torch.no_grad():
                self._num_classes = int(self.logits(example[:1].to(self.device)).shape[1])
        return self._num_classes
