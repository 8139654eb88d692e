"""The config text an mmdet / mmseg release carries, read without running it.

mmcv's ``save_checkpoint`` stores ``meta['config']``: the training config as Python source (mmcv's
``Config.pretty_text``: ``name = dict(...)`` assignments of literals). :func:`parse_config`
reads it with :mod:`ast` and evaluates only literals, ``dict(...)`` calls with keyword arguments,
unary minus and references to names assigned earlier in the text; anything else (a call to
another function, an attribute, an import, arithmetic) raises ``ValueError`` naming the line.
Nothing in the text is executed.
"""
import ast
from typing import Any, Dict

__all__ = ["parse_config"]


def _literal(node: ast.AST, names: Dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(e, names) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items) if isinstance(node, ast.Tuple) else set(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError(f"line {node.lineno}: '**' in a dict literal is not read")
        return {_literal(k, names): _literal(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        if any(kw.arg is None for kw in node.keywords):
            raise ValueError(f"line {node.lineno}: 'dict(**...)' is not read")
        return {kw.arg: _literal(kw.value, names) for kw in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, names)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"line {node.lineno}: unary sign on a {type(value).__name__}")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    raise ValueError(f"line {getattr(node, 'lineno', '?')}: {type(node).__name__} "
                     f"({ast.unparse(node)[:60]!r}) is not a literal")


def parse_config(text: str) -> Dict[str, Any]:
    """The assignments of an mmcv config text, as plain Python values.

    Args:
        text (str): the config as ``Config.pretty_text`` writes it (what ``meta['config']`` holds).

    Returns:
        dict: name -> value (dicts, lists, tuples, numbers, strings, None, booleans).

    Raises:
        ValueError: the text is not Python, or holds something other than literal assignments
            (the message names the line).

    Examples::
        >>> parse_config("model = dict(type='RetinaNet', neck=dict(num_outs=5))\\nscale = (1333, 800)")
        {'model': {'type': 'RetinaNet', 'neck': {'num_outs': 5}}, 'scale': (1333, 800)}
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise ValueError(f"the release's config is not Python (line {e.lineno}: {e.msg})") from None
    names: Dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # a docstring
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise ValueError(f"line {stmt.lineno}: only 'name = literal' assignments are read, "
                             f"got {type(stmt).__name__}")
        names[stmt.targets[0].id] = _literal(stmt.value, names)
    return names
