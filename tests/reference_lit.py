"""A reference LIT forward written from docs/architecture.md alone, fed a state dict in the *official* key layout.

It shares no code with ``litvit``: plain functional ops, torchvision's ``deform_conv2d`` for DTM,
explicit softmax attention, and the relative position index built with Python loops from the
formula ``(dy + H - 1) * (2W - 1) + (dx + W - 1)``. The tests compare litvit's logits to it.
"""
import torch
import torch.nn.functional as F
import torchvision


def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _linear(x, sd, prefix):
    return F.linear(x, sd[prefix + ".weight"], sd.get(prefix + ".bias"))


def _mlp(x, sd, prefix):
    return _linear(F.gelu(_linear(x, sd, prefix + ".fc1")), sd, prefix + ".fc2")


def _rel_index(H, W):
    N = H * W
    index = torch.empty(N, N, dtype=torch.long)
    for n in range(N):
        yq, xq = divmod(n, W)
        for m in range(N):
            yk, xk = divmod(m, W)
            index[n, m] = (yq - yk + H - 1) * (2 * W - 1) + (xq - xk + W - 1)
    return index


def _attention(x, sd, prefix, heads, feat_size=None):
    B, N, C = x.shape
    hd = C // heads
    qkv = _linear(x, sd, prefix + ".qkv").reshape(B, N, 3, heads, hd)
    out = torch.empty(B, N, heads, hd, dtype=x.dtype)
    table = sd.get(prefix + ".relative_position_bias_table")
    if table is not None:
        H, W = feat_size
        bias = table[_rel_index(H, W).flatten()].reshape(N, N, heads)
    for h in range(heads):
        q, k, v = qkv[:, :, 0, h], qkv[:, :, 1, h], qkv[:, :, 2, h]  # B, N, hd
        logits = (q @ k.transpose(1, 2)) * hd ** -0.5
        if table is not None:
            logits = logits + bias[:, :, h]
        out[:, :, h] = logits.softmax(-1) @ v
    return _linear(out.reshape(B, N, C), sd, prefix + ".proj")


def _block(x, sd, prefix, heads, eps, feat_size):
    if prefix + ".attn.qkv.weight" in sd:
        x = x + _attention(_ln(x, sd, prefix + ".norm1", eps), sd, prefix + ".attn", heads, feat_size)
    return x + _mlp(_ln(x, sd, prefix + ".norm2", eps), sd, prefix + ".mlp")


def _dtm(tokens, sd, prefix, feat_size, training):
    B, N, C = tokens.shape
    H, W = feat_size
    x = tokens.transpose(1, 2).reshape(B, C, H, W)
    offset = F.conv2d(x, sd[prefix + ".dconv.conv_offset.weight"], sd[prefix + ".dconv.conv_offset.bias"], stride=2)
    x = torchvision.ops.deform_conv2d(x, offset, sd[prefix + ".dconv.weight"], sd[prefix + ".dconv.bias"], stride=2)
    x = F.batch_norm(
        x, sd[prefix + ".norm_layer.running_mean"].clone(), sd[prefix + ".norm_layer.running_var"].clone(),
        sd[prefix + ".norm_layer.weight"], sd[prefix + ".norm_layer.bias"], training=training, momentum=0.1, eps=1e-5)
    x = F.gelu(x)
    return x.flatten(2).transpose(1, 2), (H // 2, W // 2)


def _conv_merge(tokens, sd, prefix, feat_size):
    """PVT's plain patch embedding between stages: Conv2d(C, C', 2, stride 2) then LayerNorm eps 1e-5."""
    B, N, C = tokens.shape
    H, W = feat_size
    x = F.conv2d(tokens.transpose(1, 2).reshape(B, C, H, W), sd[prefix + ".proj.weight"], sd[prefix + ".proj.bias"],
                 stride=2)
    return _ln(x.flatten(2).transpose(1, 2), sd, prefix + ".norm", 1e-5), (H // 2, W // 2)


def _stem(x, sd, prefix):
    x = F.conv2d(x, sd[prefix + ".proj.weight"], sd[prefix + ".proj.bias"], stride=4)
    feat_size = (x.shape[2], x.shape[3])
    return _ln(x.flatten(2).transpose(1, 2), sd, prefix + ".norm", 1e-5), feat_size


def reference_forward_pvt(sd, x, num_heads, training=False):
    """LIT-Ti layout: patch_embed1..4, pos_embed1..4, cls_token, block1..4, norm, head. The same
    function reads PVT-S w/ MSA (``pvt_full_msa.pth``): its patch_embed2..4 are plain conv merges
    (``proj``, ``norm``) and its stage 1-2 blocks have attention."""
    x, feat_size = _stem(x, sd, "patch_embed1")
    for s in range(1, 5):
        if s > 1 and f"patch_embed{s}.proj.weight" in sd:
            x, feat_size = _conv_merge(x, sd, f"patch_embed{s}", feat_size)
        elif s > 1:
            x, feat_size = _dtm(x, sd, f"patch_embed{s}", feat_size, training)
        if s == 4:
            x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1)
        x = x + sd[f"pos_embed{s}"]
        depth = len({k.split(".")[1] for k in sd if k.startswith(f"block{s}.")})
        for j in range(depth):
            x = _block(x, sd, f"block{s}.{j}", num_heads[s - 1], 1e-6, feat_size)
    x = _ln(x, sd, "norm", 1e-6)
    return _linear(x[:, 0], sd, "head")


def reference_forward_swin(sd, x, num_heads, training=False):
    """LIT-S/M/B layout: patch_embed, layers.i.blocks.j, layers.i.downsample (after stage i), norm, head."""
    x, feat_size = _stem(x, sd, "patch_embed")
    for i in range(4):
        depth = len({k.split(".")[3] for k in sd if k.startswith(f"layers.{i}.blocks.")})
        for j in range(depth):
            x = _block(x, sd, f"layers.{i}.blocks.{j}", num_heads[i], 1e-5, feat_size)
        if f"layers.{i}.downsample.dconv.weight" in sd:
            x, feat_size = _dtm(x, sd, f"layers.{i}.downsample", feat_size, training)
    x = _ln(x, sd, "norm", 1e-5)
    return _linear(x.mean(dim=1), sd, "head")
