"""The names that the public functions accept and write, shared by :mod:`scn2s.pp`, :mod:`scn2s.tl` and the CLI."""

from __future__ import annotations

__all__ = [
    "METHODS",
    "OUTPUTS",
    "SPLIT_RECORD",
    "denoise_keys",
    "denoise_ownership",
    "factor_keys",
    "integrated_key",
    "split_ownership",
]

METHODS = ("auto", "lowrank", "autoencoder")
"""The values of ``method`` of :func:`scn2s.pp.denoise`."""

OUTPUTS = ("layer", "factors")
"""The values of ``output`` of :func:`scn2s.pp.denoise`."""


def factor_keys(key_added: str) -> dict[str, tuple[str, str]]:
    """Where each stored factor lives: ``{factor: (attribute, key)}``."""
    return {
        "scores": ("obsm", f"X_{key_added}"),
        "loadings": ("varm", f"{key_added}_loadings"),
        "mean": ("var", f"{key_added}_mean"),
        "modelled": ("var", f"{key_added}_modelled"),
        "library_size": ("obs", f"{key_added}_library_size"),
        "scale": ("obs", f"{key_added}_scale"),
    }


def denoise_keys(
    key_added: str, output: str, *, method: str = "auto", uncertainty: bool = False, integrate: bool = False
) -> dict[str, list[str]]:
    """The keys a :func:`~scn2s.pp.denoise` run may write, by attribute (the ``uns`` record too).

    The layer output writes the layer and the cells' embedding (with ``integrate``, also the embedding with the
    batches removed, :func:`integrated_key`), the low-rank family's loadings (unless ``method="autoencoder"``) and,
    with ``uncertainty``, the posterior standard deviations; ``output="factors"`` writes the factors
    (:func:`factor_keys`).
    """
    keys: dict[str, list[str]] = {"uns": [key_added]}
    if output == "layer":
        keys["layers"] = [key_added, f"{key_added}_sd"] if uncertainty else [key_added]
        keys["obsm"] = [factor_keys(key_added)["scores"][1]]
        if integrate:
            keys["obsm"].append(integrated_key(key_added))
        if method != "autoencoder":
            keys["varm"] = [factor_keys(key_added)["loadings"][1]]
        return keys
    for attribute, key in factor_keys(key_added).values():
        keys.setdefault(attribute, []).append(key)
    return keys


def integrated_key(key_added: str) -> str:
    """The ``obsm`` key of the embedding with the batches removed: ``f"X_{key_added}_integrated"``."""
    return f"{factor_keys(key_added)['scores'][1]}_integrated"


def denoise_ownership(key_added: str, layer: str | None) -> dict:
    """The ownership arguments of :func:`~scn2s._validate.check_writable` and :func:`~scn2s._validate.write_results`.

    For a :func:`~scn2s.pp.denoise` run: its record, the input layer (never written), and the keys written by a
    record of an earlier version, which lists none (the layer or the factors, after its ``output``).
    """

    def legacy(record) -> dict[str, list[str]] | None:
        if "params" not in record or "version" not in record:
            return None
        if str(record.get("output", "layer")) == "layer":
            return {"layers": [key_added]}  # the layer alone: the embedding came with later versions
        keys = denoise_keys(key_added, "factors")
        del keys["uns"]
        return keys

    protected = () if layer is None else (("layers", layer),)
    return {"record_key": key_added, "protected": protected, "legacy": legacy}


SPLIT_RECORD = "split_counts"
"""The ``uns`` entry of :func:`~scn2s.pp.split_counts`'s record."""


def split_ownership(layer: str | None) -> dict:
    """The ownership arguments of :func:`~scn2s._validate.write_results` for :func:`~scn2s.pp.split_counts`.

    Its record, the input layer (never written), and the layers of an earlier version's record (its
    ``params["key_added"]``).
    """

    def legacy(record) -> dict[str, list[str]] | None:
        keys = record.get("params", {}).get("key_added") if isinstance(record.get("params"), dict) else None
        return None if keys is None else {"layers": [str(key) for key in keys]}

    return {"record_key": SPLIT_RECORD, "protected": () if layer is None else (("layers", layer),), "legacy": legacy}
