"""Test oracle: the public Context Cluster model (ma-xu/Context-Cluster, ``models/context_cluster.py``) written
out again in plain torch, for comparing our backbone and classifier with it given the same weights.

It follows the public code's structure, not ours: its own ``Cluster`` (the einops rearranges as reshapes and
permutes, regions only when both fold factors exceed 1, ``AdaptiveAvgPool2d`` centres, the dense ``[B, M, N]``
similarity with a scattered one-hot mask and ``[B, M, N, D]`` products), ``Mlp`` (Linear on channels-last,
exact GELU), ``ClusterBlock`` (layer scale 1 on the mixer branch, 2 on the MLP branch), ``PointRecuder``
stem / downsamplings, the position channels (``arange(n)/(n-1) - 0.5`` for dims 2 and 3, in that order), the
``norm{0,2,4,6}`` outputs of ``fork_feat`` and the ``norm`` + ``head`` classifier. Nothing here imports the
project's model code: only the architecture settings (numbers) come from ``coc_det.ARCH_SETTINGS``.

``denominator``: ``"similarity"`` (the public code since 2023-05-31) or ``"count"`` (before it).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class OriginalCluster(nn.Module):
    def __init__(self, dim, heads, head_dim, proposal, fold, denominator):
        super().__init__()
        self.heads, self.proposal, self.fold, self.denominator = heads, proposal, fold, denominator
        self.f = nn.Conv2d(dim, heads * head_dim, 1)
        self.proj = nn.Conv2d(heads * head_dim, dim, 1)
        self.v = nn.Conv2d(dim, heads * head_dim, 1)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def _split(self, t):
        """'b (e c) w h -> (b e) c w h', then 'b c (f1 w) (f2 h) -> (b f1 f2) c w h' when folding."""
        b, ec, w, h = t.shape
        t = t.reshape(b * self.heads, ec // self.heads, w, h)
        if self.fold > 1:  # the public code folds only when fold_w > 1 and fold_h > 1 (square folds here)
            f = self.fold
            be, c = t.shape[:2]
            t = t.reshape(be, c, f, w // f, f, h // f).permute(0, 2, 4, 1, 3, 5).reshape(be * f * f, c, w // f, h // f)
        return t

    def _merge(self, t, b):
        """The inverse: '(b f1 f2) c w h -> b c (f1 w) (f2 h)', then '(b e) c w h -> b (e c) w h'."""
        if self.fold > 1:
            f = self.fold
            n, c, w, h = t.shape
            t = t.reshape(n // (f * f), f, f, c, w, h).permute(0, 3, 1, 4, 2, 5).reshape(n // (f * f), c, f * w, f * h)
        be, c, w, h = t.shape
        return t.reshape(b, self.heads * c, w, h)

    def assignment(self, x):
        """The centre index ``sim.max(dim=1)`` of every pixel laid back out as ``[B, heads, H, W]`` (what a
        visualisation of the original's clusters reads)."""
        feat = self._split(self.f(x))
        b, c, w, h = feat.shape
        pool = nn.AdaptiveAvgPool2d((self.proposal, self.proposal))
        c_hat = F.normalize(pool(feat).reshape(b, c, -1).permute(0, 2, 1), dim=-1)
        x_hat = F.normalize(feat.reshape(b, c, -1).permute(0, 2, 1), dim=-1)
        sim = torch.sigmoid(self.sim_beta + self.sim_alpha * torch.matmul(c_hat, x_hat.transpose(-2, -1)))
        idx = sim.max(dim=1).indices.reshape(b, 1, w, h)
        return self._merge(idx, x.shape[0])

    def forward(self, x):
        b0 = x.shape[0]
        value = self._split(self.v(x))
        x = self._split(self.f(x))
        b, c, w, h = x.shape
        pool = nn.AdaptiveAvgPool2d((self.proposal, self.proposal))
        centers = pool(x)
        value_centers = pool(value).flatten(2).transpose(1, 2)  # [b, M, c]
        c_hat = F.normalize(centers.reshape(b, c, -1).permute(0, 2, 1), dim=-1)
        x_hat = F.normalize(x.reshape(b, c, -1).permute(0, 2, 1), dim=-1)
        sim = torch.sigmoid(self.sim_beta + self.sim_alpha * torch.matmul(c_hat, x_hat.transpose(-2, -1)))  # [b, M, N]
        _, idx = sim.max(dim=1, keepdim=True)
        mask = torch.zeros_like(sim)
        mask.scatter_(1, idx, 1.0)
        sim = sim * mask
        value2 = value.flatten(2).transpose(1, 2)  # [b, N, c]
        den = (sim if self.denominator == "similarity" else mask).sum(dim=-1, keepdim=True)
        out = ((value2.unsqueeze(1) * sim.unsqueeze(-1)).sum(dim=2) + value_centers) / (den + 1.0)  # [b, M, c]
        out = (out.unsqueeze(2) * sim.unsqueeze(-1)).sum(dim=1)  # [b, N, c]
        out = out.transpose(1, 2).reshape(b, -1, w, h)
        return self.proj(self._merge(out, b0))


class OriginalMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)


class OriginalBlock(nn.Module):
    def __init__(self, dim, mlp_ratio, heads, head_dim, proposal, fold, denominator):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = OriginalCluster(dim, heads, head_dim, proposal, fold, denominator)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = OriginalMlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(1e-5 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x):
        x = x + self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * self.token_mixer(self.norm1(x))
        return x + self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * self.mlp(self.norm2(x))


class OriginalReducer(nn.Module):  # PointRecuder
    def __init__(self, k, stride, pad, cin, cout):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=pad)

    def forward(self, x):
        return self.proj(x)


class OriginalContextCluster(nn.Module):
    """``fork_feat=True``: the detection/segmentation backbone (four ``norm{2i}`` outputs); else the classifier."""

    def __init__(self, settings: dict, proposals=None, fork_feat=False, num_classes=1000, denominator="similarity"):
        super().__init__()
        s = settings
        proposals = list(proposals or s["proposals"])
        dims = s["embed_dims"]
        self.fork_feat = fork_feat
        self.patch_embed = OriginalReducer(4, 4, 0, 5, dims[0])
        network = []
        for i in range(len(s["layers"])):
            network.append(nn.Sequential(*[
                OriginalBlock(dims[i], s["mlp_ratios"][i], s["heads"][i], s["head_dim"][i], proposals[i],
                              s["folds"][i], denominator) for _ in range(s["layers"][i])]))
            if i < len(s["layers"]) - 1:
                network.append(OriginalReducer(3, 2, 1, dims[i], dims[i + 1]))
        self.network = nn.ModuleList(network)
        if fork_feat:
            self.out_indices = [2 * i for i in range(len(dims))]  # [0, 2, 4, 6] for the public four stages
            for i_emb, i_layer in enumerate(self.out_indices):
                self.add_module(f"norm{i_layer}", nn.GroupNorm(1, dims[i_emb]))
        else:
            self.norm = nn.GroupNorm(1, dims[-1])
            self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        _, _, img_w, img_h = x.shape
        # computed in the default dtype (float32) as the public code does, then promoted by the cat
        range_w = torch.arange(0, img_w) / (img_w - 1.0)
        range_h = torch.arange(0, img_h) / (img_h - 1.0)
        pos = torch.stack(torch.meshgrid(range_w, range_h, indexing="ij"), dim=-1).float() - 0.5
        pos = pos.permute(2, 0, 1).unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        x = self.patch_embed(torch.cat([x, pos.to(x.dtype)], dim=1))
        outs = []
        for idx, layer in enumerate(self.network):
            x = layer(x)
            if self.fork_feat and idx in self.out_indices:
                outs.append(getattr(self, f"norm{idx}")(x))
        if self.fork_feat:
            return outs
        return self.head(self.norm(x).mean([-2, -1]))


def random_public_weights(model: nn.Module, seed: int = 0) -> dict:
    """A state dict in the public layout with every value random and every scalar distinct from its
    default, so that a swapped pair of same-shaped weights (f / v, the two layer scales) changes the result:
    conv/linear weights ~ N(0, 1/fan_in), biases and norm affines around their defaults, layer scales in
    [0.2, 1] per channel, alpha in [0.5, 2], beta in [-0.5, 0.5]."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("layer_scale"):
            v = 0.2 + 0.8 * torch.rand(t.shape, generator=g)
        elif leaf == "sim_alpha":
            v = 0.5 + 1.5 * torch.rand(t.shape, generator=g)
        elif leaf == "sim_beta":
            v = torch.rand(t.shape, generator=g) - 0.5
        elif leaf == "weight" and t.dim() > 1:
            v = torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5
        elif leaf == "weight":  # GroupNorm scale
            v = 1.0 + 0.2 * torch.randn(t.shape, generator=g)
        else:
            v = 0.1 * torch.randn(t.shape, generator=g)
        out[name] = v.to(t.dtype)
    return out


def random_public_model(settings: dict, seed: int = 0, **kwargs):
    """``OriginalContextCluster(settings, **kwargs)`` in float64, eval mode, holding
    :func:`random_public_weights`; returns ``(model, state dict)``."""
    model = OriginalContextCluster(settings, **kwargs).double().eval()
    state = random_public_weights(model, seed)
    model.load_state_dict(state, strict=True)
    return model, state
