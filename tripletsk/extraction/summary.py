"""What an extraction run did, and the text the command line prints about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from tripletsk.cache.failures import escape_field

__all__ = ["ExtractionSummary"]


@dataclass
class ExtractionSummary:
    """What a run did. ``extracted`` counts new images, ``changed`` re-extracted changed ones."""

    output: str
    extracted: int = 0
    cached: int = 0
    changed: int = 0
    failed: list = field(default_factory=list)  # [(key, reason)], all current failures
    pruned: int = 0
    missing: int = 0  # cached images whose file is gone, kept (see prune)
    resumed: int = 0  # of extracted + changed, finished by an earlier interrupted run
    repaired: int = 0  # of changed, cached rows whose features were damaged (verify)
    lost: int = 0  # damaged cached rows whose file is gone: dropped
    ignored: int = 0  # files without an image extension
    skipped_dirs: list = field(default_factory=list)
    n_images: int = 0  # rows in the cache after the run
    failed_list: str | None = None  # path of the text file listing failures
    interrupted: bool = False
    written: bool = False  # whether the cache file was (re)written
    seconds: float = 0.0
    setup_seconds: float = 0.0  # from the start until the model was ready (0: none was built)

    #: How :meth:`format` describes the resumed images.
    resumed_note: ClassVar[str] = "finished by an interrupted run and resumed"

    def describe_output(self) -> str:
        """What follows the cache's path on the first line of :meth:`format`."""
        return f"{self.n_images} images"

    def format(self) -> str:
        lines = [f"features: {self.output} ({self.describe_output()})"]
        ext = f"  extracted: {self.extracted}"
        if self.resumed:
            ext += f" ({self.resumed} {self.resumed_note})"
        lines.append(ext)
        lines.append(f"  already cached: {self.cached}")
        changed = f"  changed and re-extracted: {self.changed}"
        if self.repaired:
            changed += f" ({self.repaired} with damaged features in the cache)"
        lines.append(changed)
        if self.lost:
            lines.append(f"  damaged features dropped (file gone): {self.lost}")
        fail = f"  failed: {len(self.failed)}"
        if self.failed:
            where = f"; full list in {self.failed_list}" if self.failed_list else ""
            fail += f" (skipped, reasons stored in the cache's 'failed' list{where})"
        lines.append(fail)
        for key, reason in self.failed[:10]:
            lines.append(f"    {escape_field(key)}: {escape_field(reason)}")
        if len(self.failed) > 10:
            lines.append(f"    ... and {len(self.failed) - 10} more")
        if self.missing:
            lines.append(f"  files gone, features kept: {self.missing} (use --prune to drop them)")
        if self.pruned:
            lines.append(f"  pruned (file gone): {self.pruned}")
        if self.ignored:
            lines.append(f"  ignored (not an image extension): {self.ignored}")
        for d, reason in self.skipped_dirs[:10]:
            lines.append(f"  skipped folder {escape_field(d)}: {escape_field(reason)}")
        if self.seconds:
            lines.append(f"  time: {self.seconds:.1f} s{self._rate()}")
        if self.interrupted:
            lines.append("  interrupted: finished images are saved; run again to continue")
        return "\n".join(lines)

    def _rate(self) -> str:
        done = self.extracted + self.changed - self.resumed
        if done and self.setup_seconds and self.seconds > self.setup_seconds:
            return f", {done / (self.seconds - self.setup_seconds):.1f} images/s after setup"
        return ""
