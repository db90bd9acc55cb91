// Batch invariance at temperature 0: a prompt's logits are the same, bit for bit, whether
// it runs alone or among other sequences that share its batches, as llama-server's
// continuous batching runs it.
//
// For each probe prompt:
// - alone: the prompt decoded in one context (n_ubatch 512), then N_GEN tokens by greedy
//   choice; the logits of the last prompt token and of each generated token are kept;
// - batched: a second context (n_ubatch 64, four sequences, one stream each as
//   `llama-server -np 4` has them) takes the prompt in pieces of a few to a hundred tokens,
//   in the same batches as three other sequences' prompt pieces and generated tokens, then
//   the alone run's tokens one at a time beside the others' (so every step is compared even
//   after a difference).
// Each step's logits are compared with the alone run's: bit-identical, or the largest
// difference and whether the top token still agrees.
//
// Usage: batch_invariance PLUGIN|- MODEL TEXT_FILE [unified]. `unified`: one cache shared
// by the sequences (llama-server's default without -np), where the cells a sequence gets
// depend on the others. Exit status 0 when every step of every probe is bit-identical, 1
// otherwise, 2 on a setup error.

#include "ggml-backend.h"
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static const int N_GEN = 12;
static const int N_SEQ = 4;

struct ctx_t {
    llama_context * ctx;
    const llama_vocab * vocab;
    int n_vocab;
};

static std::vector<llama_token> tokenize(const ctx_t & c, const std::string & text) {
    std::vector<llama_token> toks(text.size() + 8);
    const int n = llama_tokenize(c.vocab, text.c_str(), (int) text.size(), toks.data(), (int) toks.size(), true, false);
    toks.resize(n > 0 ? n : 0);
    return toks;
}

static bool g_unified = false;

static llama_context * make_ctx(llama_model * model, int n_ubatch) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx           = 4096;  // 1024 per stream
    cp.n_batch         = 512;
    cp.n_ubatch        = n_ubatch;
    cp.n_seq_max       = N_SEQ;
    cp.kv_unified      = g_unified;  // default: one stream per sequence, as llama-server -np 4
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cp.n_threads       = 2;
    cp.n_threads_batch = 2;
    return llama_init_from_model(model, cp);
}

static int argmax(const float * l, int n) {
    int best = 0;
    for (int t = 1; t < n; t++) {
        best = l[t] > l[best] ? t : best;
    }
    return best;
}

// One sequence's work in the batched run: its tokens (prompt, then generated ones), how many
// are decoded, and its pieces' sizes in turn (a generated token goes in one at a time).
struct stream_t {
    llama_seq_id seq;
    std::vector<llama_token> toks;
    int n_prompt;
    int done = 0;
    std::vector<int> pieces;
    size_t piece = 0;
};

int main(int argc, char ** argv) {
    if (argc != 4 && !(argc == 5 && std::string(argv[4]) == "unified")) {
        fprintf(stderr, "usage: %s PLUGIN|- MODEL TEXT_FILE [unified]\n", argv[0]);
        return 2;
    }
    g_unified = argc == 5;
    if (std::string(argv[1]) != "-" && !ggml_backend_load(argv[1])) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 2;
    }
    std::ifstream f(argv[3]);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string corpus = ss.str();
    if (corpus.size() < 20000) {
        fprintf(stderr, "%s: too short a text\n", argv[3]);
        return 2;
    }
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[2], llama_model_default_params());
    if (!model) {
        return 2;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    ctx_t alone{make_ctx(model, 512), vocab, n_vocab};
    ctx_t batched{make_ctx(model, 64), vocab, n_vocab};
    if (!alone.ctx || !batched.ctx) {
        return 2;
    }

    // Probes of a few, a hundred and several hundred tokens; the other sequences' prompts
    // from elsewhere in the text.
    const std::vector<std::string> probes = {
        "The three primary colors are",
        corpus.substr(1000, 500),
        corpus.substr(6000, 2400),
    };
    const std::vector<std::string> others = {corpus.substr(15000, 900), corpus.substr(3000, 150), corpus.substr(20000, 1800)};

    bool all_same = true;
    for (size_t pi = 0; pi < probes.size(); pi++) {
        const std::vector<llama_token> prompt = tokenize(alone, probes[pi]);
        const int n_prompt = (int) prompt.size();

        // Alone: the prompt in batches of up to 512 tokens, then greedy steps.
        llama_memory_clear(llama_get_memory(alone.ctx), true);
        std::vector<std::vector<float>> ref;
        std::vector<llama_token> toks = prompt;
        for (int pos = 0; pos < n_prompt + N_GEN; ) {
            const int n = pos < n_prompt ? std::min(512, n_prompt - pos) : 1;
            llama_batch b = llama_batch_init(n, 0, 1);
            for (int i = 0; i < n; i++) {
                b.token[i] = toks[pos + i];
                b.pos[i] = pos + i;
                b.n_seq_id[i] = 1;
                b.seq_id[i][0] = 0;
                b.logits[i] = pos + i + 1 >= n_prompt;
            }
            b.n_tokens = n;
            if (llama_decode(alone.ctx, b) != 0) {
                fprintf(stderr, "llama_decode failed (alone)\n");
                return 2;
            }
            llama_batch_free(b);
            pos += n;
            if (pos >= n_prompt) {
                const float * l = llama_get_logits_ith(alone.ctx, -1);
                ref.emplace_back(l, l + n_vocab);
                if (pos < n_prompt + N_GEN) {
                    toks.push_back(argmax(l, n_vocab));
                }
            }
        }

        // Batched: the probe as sequence 2 (a stream of its own), among three others.
        llama_memory_clear(llama_get_memory(batched.ctx), true);
        std::vector<stream_t> st;
        for (int s = 0; s < N_SEQ; s++) {
            stream_t x;
            x.seq = s;
            if (s == 2) {
                x.toks = toks;  // the alone run's tokens: each step compared even after a difference
                x.n_prompt = n_prompt;
                x.pieces = {5, 1, 37, 2, 100, 16, 3, 64, 9};
            } else {
                const std::vector<llama_token> p = tokenize(batched, others[s == 3 ? 2 : s]);
                x.toks = p;
                x.n_prompt = (int) p.size();
                x.pieces = s == 0 ? std::vector<int>{70, 200, 33} : std::vector<int>{17, 4};
            }
            st.push_back(x);
        }
        std::vector<std::vector<float>> got;
        std::vector<llama_token> next_other(N_SEQ, 0);
        int round = 0;
        while ((int) got.size() < N_GEN + 1) {
            llama_batch b = llama_batch_init(512, 0, 1);
            int probe_last = -1;
            std::vector<int> last_of(N_SEQ, -1);
            // Sequence 3 joins late and sequence 0 sits out every third round, so the
            // batches' make-up keeps changing.
            for (auto & x : st) {
                if ((x.seq == 3 && round < 2) || (x.seq == 0 && round % 3 == 2)) {
                    continue;
                }
                int n;
                if (x.done < x.n_prompt) {
                    n = std::min(x.pieces[x.piece++ % x.pieces.size()], x.n_prompt - x.done);
                } else if (x.seq == 2) {
                    n = 1;
                } else {
                    // Another sequence generates: its greedy token (its own cache, up to 200 of them).
                    if (x.done >= x.n_prompt + 200) {
                        continue;
                    }
                    x.toks.push_back(next_other[x.seq]);
                    n = 1;
                }
                for (int i = 0; i < n; i++) {
                    const int j = b.n_tokens++;
                    b.token[j] = x.toks[x.done + i];
                    b.pos[j] = x.done + i;
                    b.n_seq_id[j] = 1;
                    b.seq_id[j][0] = x.seq;
                    b.logits[j] = x.done + i + 1 >= x.n_prompt;
                    if (b.logits[j]) {
                        last_of[x.seq] = j;
                    }
                }
                x.done += n;
                if (x.seq == 2 && x.done >= x.n_prompt) {
                    probe_last = last_of[2];
                }
            }
            round++;
            if (b.n_tokens == 0) {
                llama_batch_free(b);
                continue;
            }
            if (llama_decode(batched.ctx, b) != 0) {
                fprintf(stderr, "llama_decode failed (batched)\n");
                return 2;
            }
            for (int s = 0; s < N_SEQ; s++) {
                if (s != 2 && last_of[s] >= 0) {
                    next_other[s] = argmax(llama_get_logits_ith(batched.ctx, last_of[s]), n_vocab);
                }
            }
            if (probe_last >= 0) {
                const float * l = llama_get_logits_ith(batched.ctx, probe_last);
                got.emplace_back(l, l + n_vocab);
            }
            llama_batch_free(b);
        }

        int same = 0, top_same = 0;
        double worst = 0;
        for (int i = 0; i <= N_GEN; i++) {
            const bool bits = memcmp(ref[i].data(), got[i].data(), n_vocab * sizeof(float)) == 0;
            same += bits;
            top_same += argmax(ref[i].data(), n_vocab) == argmax(got[i].data(), n_vocab);
            for (int t = 0; t < n_vocab; t++) {
                worst = std::max(worst, (double) std::fabs(ref[i][t] - got[i][t]));
            }
        }
        printf("probe %zu (%4d prompt tokens): %2d of %d steps bit-identical, top token the same in %d of %d, largest logit difference %.3g\n",
               pi, n_prompt, same, N_GEN + 1, top_same, N_GEN + 1, worst);
        all_same &= same == N_GEN + 1;
    }

    llama_free(alone.ctx);
    llama_free(batched.ctx);
    llama_model_free(model);
    llama_backend_free();
    return all_same ? 0 : 1;
}
