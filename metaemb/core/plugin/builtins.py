"""The core's own components (heads, objectives, samplers, scorers), registered through
the same hooks as any plugin. Imports happen inside the hooks so `import metaemb` stays light."""

from __future__ import annotations

from metaemb import hookimpl
from metaemb.core.plugin.hookspecs import Register


@hookimpl
def register_heads(register: Register) -> None:
    # heads: core/train/heads.py
    from metaemb.core.train.heads import EmbeddingHead, GMEHead

    register("linear", EmbeddingHead, description="BatchNorm, Dropout, Linear, BatchNorm → point")
    register("gme", GMEHead, description="features → Gaussian meta-embedding (a, b ≥ 0)")


@hookimpl
def register_objectives(register: Register) -> None:
    # objectives: one file each under core/train/objectives/
    # point-embedding objectives
    from metaemb.core.train.objectives.softmax import SoftmaxObjective

    register("softmax", SoftmaxObjective, description="cross-entropy over training identities")
    from metaemb.core.train.objectives.margin import ArcFaceObjective, CosFaceObjective

    register("arcface", ArcFaceObjective, description="additive angular margin softmax (ArcFace)")
    register("cosface", CosFaceObjective, description="additive cosine margin softmax (CosFace)")
    from metaemb.core.train.objectives.partial_fc import PartialFCObjective

    register(
        "partial-fc",
        PartialFCObjective,
        description="ArcFace/CosFace over a sampled fraction of class centres (Partial FC)",
    )
    from metaemb.core.train.objectives.triplet import TripletObjective

    register("triplet", TripletObjective, description="FaceNet triplet loss with online mining")
    from metaemb.core.train.objectives.contrastive import ContrastiveObjective

    register("contrastive", ContrastiveObjective, description="Siamese contrastive loss on pairs")
    from metaemb.core.train.objectives.distill import DistillObjective

    register("distill", DistillObjective, description="task loss + knowledge distillation")
    # Gaussian meta-embedding objectives
    from metaemb.core.gme import objectives as gme_objectives

    register(
        "gme-bxe",
        gme_objectives.GMEBinaryCrossEntropy,
        description="GME pairwise binary cross-entropy over all batch pairs (calibrated LLRs)",
    )
    register(
        "gme-pseudolikelihood",
        gme_objectives.GMEPseudoLikelihood,
        description="GME pseudolikelihood: each label given the others, with a new-identity term",
    )
    register(
        "gme-softmax",
        gme_objectives.GMESoftmax,
        description="GME multiclass cross-entropy against trainable class meta-embeddings",
    )


@hookimpl
def register_samplers(register: Register) -> None:
    from metaemb.core.data import pair_samplers as ps
    from metaemb.core.data import samplers as s

    register("random", s.RandomSampler, description="shuffled samples")
    register("pk", s.PKSampler, description="P identities x K samples per batch")
    register("pairs", ps.PairSampler, description="random genuine/impostor pairs (2i, 2i+1)")
    register("subject", s.SubjectSampler, description="subject-by-subject batches")
    register("mixed", s.MixedSampler, description="half subject-by-subject, half random open set")
    register(
        "hard-pairs", ps.HardPairSampler, description="most confusable pairs, mined each epoch"
    )


@hookimpl
def register_scorers(register: Register) -> None:
    from metaemb.core.scoring import calibration, cosine, scorenorm
    from metaemb.core.scoring import scorers as scoring

    register(
        "cosine",
        cosine.CosineScorer,
        description="cosine similarity (opt. training mean, WCCN, adapted to the scored data)",
    )
    register("euclidean", scoring.EuclideanScorer, description="negative Euclidean distance")
    register("plda", scoring.PLDAScorer, description="LDA + length-norm + two-covariance PLDA LLR")
    register("snorm", scorenorm.SNorm, description="s-norm of a base scorer against a cohort")
    register(
        "asnorm", scorenorm.ASNorm, description="adaptive s-norm (top-N cohort) of a base scorer"
    )
    register("calibrated", calibration.CalibratedScorer, description="base scorer → calibrated LLR")
    from metaemb.core.gme.scorer import GMEScorer

    register("gme", GMEScorer, description="closed-form meta-embedding LLR, pooled enrollment")


@hookimpl
def register_frontends(register: Register) -> None:
    from metaemb.core.plugin.interfaces import IdentityFrontend

    register("none", IdentityFrontend, description="Leave samples as they are.")


@hookimpl
def register_features(register: Register) -> None:
    from metaemb.core.plugin.passthrough import IdentityFeatures

    register("none", IdentityFeatures, description="samples are network input: stack or pad them")
