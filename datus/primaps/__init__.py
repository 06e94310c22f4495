"""PriMaPs-EM (Hahn, Araslanov, Schaub-Meyer & Roth, TMLR 2024) as ``method=primaps``: principal mask
proposals from frozen features, class prototypes fitted to them by stochastic EM."""

from datus.primaps.em import PriMaPsModule, Prototypes, check_decay, class_focal_loss
from datus.primaps.proposals import BACKGROUND, majority_vote, median_filter, principal_masks, proposal_map, vote_kept
from datus.primaps.stage import PriMaPs, ProposalPairs

__all__ = ["BACKGROUND", "PriMaPs", "PriMaPsModule", "ProposalPairs", "Prototypes", "check_decay", "class_focal_loss",
           "majority_vote", "median_filter", "principal_masks", "proposal_map", "vote_kept"]
