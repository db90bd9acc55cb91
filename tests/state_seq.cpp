// Sequence state round trips through llama.cpp's state API with the KV cache in the buffer
// the backend gives it (SMEPilot's packed one when the plugin is loaded):
// - a sequence saved with LLAMA_STATE_SEQ_FLAGS_ON_DEVICE (copies kept in the cache's own
//   buffer type) and to host memory, then overwritten by another prompt and restored,
//   continues with the tokens it gives without the round trip;
// - copied to the other stream of a two-stream cache (seq_cp across streams), it gives
//   them too.
// Usage: state_seq PLUGIN|- MODEL. Exit status 0 when every round trip holds.

#include "ggml-backend.h"
#include "llama.h"

#include <cstdio>
#include <string>
#include <vector>

static const int N_GEN = 16;

struct run {
    llama_context * ctx;
    const llama_vocab * vocab;
};

static std::vector<llama_token> tokenize(const run & r, const std::string & text) {
    std::vector<llama_token> toks(text.size() + 8);
    const int n = llama_tokenize(r.vocab, text.c_str(), (int) text.size(), toks.data(), (int) toks.size(), true, false);
    toks.resize(n > 0 ? n : 0);
    return toks;
}

// Decodes `toks` into sequence `seq` from position `pos`, logits for the last token only.
static bool decode(const run & r, const std::vector<llama_token> & toks, llama_seq_id seq, int pos) {
    llama_batch b = llama_batch_init((int) toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); i++) {
        b.token[i]     = toks[i];
        b.pos[i]       = pos + (int) i;
        b.n_seq_id[i]  = 1;
        b.seq_id[i][0] = seq;
        b.logits[i]    = i + 1 == toks.size();
    }
    b.n_tokens = (int) toks.size();
    const int rc = llama_decode(r.ctx, b);
    llama_batch_free(b);
    if (rc != 0) {
        fprintf(stderr, "llama_decode failed: %d\n", rc);
    }
    return rc == 0;
}

// The last prompt token decoded at `pos`, then N_GEN tokens by greedy choice.
static std::vector<llama_token> generate(const run & r, llama_token last, llama_seq_id seq, int pos) {
    std::vector<llama_token> out;
    const int n_vocab = llama_vocab_n_tokens(r.vocab);
    for (int i = 0; i < N_GEN; i++) {
        if (!decode(r, {last}, seq, pos + i)) {
            return {};
        }
        const float * logits = llama_get_logits_ith(r.ctx, -1);
        llama_token best = 0;
        for (llama_token t = 1; t < n_vocab; t++) {
            best = logits[t] > logits[best] ? t : best;
        }
        out.push_back(best);
        last = best;
    }
    return out;
}

static std::string text_of(const run & r, const std::vector<llama_token> & toks) {
    std::string s;
    char piece[256];
    for (llama_token t : toks) {
        const int n = llama_token_to_piece(r.vocab, t, piece, sizeof(piece), 0, true);
        s.append(piece, n > 0 ? n : 0);
    }
    return s;
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PLUGIN|- MODEL\n", argv[0]);
        return 2;
    }
    if (std::string(argv[1]) != "-" && !ggml_backend_load(argv[1])) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 2;
    }
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[2], llama_model_default_params());
    if (!model) {
        return 2;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx           = 1024;
    cp.n_batch         = 512;
    cp.n_seq_max       = 2;
    cp.kv_unified      = false;  // one stream per sequence
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cp.n_threads       = 2;
    cp.n_threads_batch = 2;
    run r{llama_init_from_model(model, cp), llama_model_get_vocab(model)};
    if (!r.ctx) {
        return 2;
    }
    llama_memory_t mem = llama_get_memory(r.ctx);

    const std::vector<llama_token> prompt = tokenize(r, "The GNU General Public License is a free, copyleft license for software and other kinds of works. The licenses for most software");
    const std::vector<llama_token> other  = tokenize(r, "Once upon a time, in a land far away, there lived a dragon who liked to count the stars every night");
    const std::vector<llama_token> head(prompt.begin(), prompt.end() - 1);
    const llama_token last = prompt.back();
    const int n_head = (int) head.size();

    // The reference: the prompt, then N_GEN tokens.
    if (!decode(r, head, 0, 0)) {
        return 1;
    }
    const std::vector<llama_token> ref = generate(r, last, 0, n_head);
    printf("reference                 -> %s\n", text_of(r, ref).c_str());
    if (ref.size() != N_GEN) {
        return 1;
    }

    bool ok = true;
    const struct { llama_state_seq_flags flags; const char * name; } modes[] = {
        {LLAMA_STATE_SEQ_FLAGS_ON_DEVICE, "on device"},
        {0, "in host memory"},
    };
    for (const auto & m : modes) {
        // The prompt's state saved, the sequence overwritten by another prompt, restored.
        llama_memory_seq_rm(mem, 0, -1, -1);
        if (!decode(r, head, 0, 0)) {
            return 1;
        }
        std::vector<uint8_t> state(llama_state_seq_get_size_ext(r.ctx, 0, m.flags));
        const size_t saved = llama_state_seq_get_data_ext(r.ctx, state.data(), state.size(), 0, m.flags);
        llama_memory_seq_rm(mem, 0, -1, -1);
        if (!decode(r, other, 0, 0) || generate(r, other.back(), 0, (int) other.size()).size() != N_GEN) {
            return 1;
        }
        llama_memory_seq_rm(mem, 0, -1, -1);
        const size_t read = llama_state_seq_set_data_ext(r.ctx, state.data(), state.size(), 0, m.flags);
        const std::vector<llama_token> got = generate(r, last, 0, n_head);
        printf("restored %-16s -> %s (%zu bytes saved, %zu read)\n", m.name, text_of(r, got).c_str(), saved, read);
        if (saved == 0 || read != saved || got != ref) {
            printf("FAIL: the sequence restored %s continues differently\n", m.name);
            ok = false;
        }
    }

    // The restored prompt copied to sequence 1, which lives in the other stream.
    llama_memory_seq_rm(mem, 0, -1, -1);
    if (!decode(r, head, 0, 0)) {
        return 1;
    }
    llama_memory_seq_rm(mem, 1, -1, -1);
    llama_memory_seq_cp(mem, 0, 1, -1, -1);
    llama_memory_seq_rm(mem, 0, -1, -1);
    const std::vector<llama_token> copied = generate(r, last, 1, n_head);
    printf("copied to stream 1        -> %s\n", text_of(r, copied).c_str());
    if (copied != ref) {
        printf("FAIL: the sequence copied to the other stream continues differently\n");
        ok = false;
    }

    llama_free(r.ctx);
    llama_model_free(model);
    llama_backend_free();
    return ok ? 0 : 1;
}
