"""Summary statistics of a dataset (what ``dawm data info`` prints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from dawm_env.data.records import OfflineDataset
from dawm_env.tasks import get_task


@dataclass(frozen=True)
class DatasetSummary:
    """Episode counts and returns of a dataset; normalised scores use D4RL's reference returns x100."""

    source: str
    task: str
    episodes: int
    transitions: int
    terminated_episodes: int
    truncated_episodes: int
    return_mean: float
    return_std: float
    return_min: float
    return_max: float
    normalized_score_mean: Optional[float]
    complete_episodes: int
    complete_normalized_score_mean: Optional[float]

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)

    def format(self, rollouts: bool = False) -> str:
        """Human-readable multi-line text.

        Args:
            rollouts: the episodes are generated H-step rollouts (``dawm generate``): their returns are not
                episode returns, so no normalised score is shown.
        """
        returns = (f"mean {self.return_mean:.1f} +- {self.return_std:.1f}, min {self.return_min:.1f}, "
                   f"max {self.return_max:.1f}")
        lines = [
            f"dataset:      {self.source}",
            f"task:         {self.task or 'unknown'}",
            f"episodes:     {self.episodes} ({self.terminated_episodes} terminated, {self.truncated_episodes} truncated)",
            f"transitions:  {self.transitions}",
        ]
        if rollouts:  # a 7-step rollout's return says nothing about a policy's score
            lines += [f"rollout return: {returns}",
                      "normalised:   n/a (episodes are generated rollouts, not full episodes)"]
        else:
            lines += [
                f"return:       {returns}",
                f"normalised:   {_fmt(self.normalized_score_mean)} (D4RL reference returns, x100, all episodes)",
                f"complete:     {self.complete_episodes} episodes that terminated or hit the time limit, mean "
                f"normalised {_fmt(self.complete_normalized_score_mean)} (excludes episodes cut by the collection "
                "budget)",
            ]
        return "\n".join(lines)


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def summarize(data: OfflineDataset) -> DatasetSummary:
    """Compute the :class:`DatasetSummary` of ``data``."""
    returns = data.episode_returns()
    last = data.episode_offsets[1:] - 1
    score, complete_score, complete = None, None, data.terminations[last]
    if data.task:
        task = get_task(data.task)
        scores = task.normalized_score(returns)
        score = float(scores.mean())
        complete = complete | (data.episode_lengths >= task.max_episode_steps)
        complete_score = float(scores[complete].mean()) if complete.any() else None
    return DatasetSummary(
        source=data.source, task=data.task, episodes=data.num_episodes, transitions=data.num_transitions,
        terminated_episodes=int(data.terminations[last].sum()), truncated_episodes=int(data.truncations[last].sum()),
        return_mean=float(returns.mean()), return_std=float(returns.std()), return_min=float(returns.min()),
        return_max=float(returns.max()), normalized_score_mean=score, complete_episodes=int(complete.sum()),
        complete_normalized_score_mean=complete_score,
    )
