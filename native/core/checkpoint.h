// Hugging Face model directories: config.json + model.safetensors (or shards listed in model.safetensors.index.json).
// Supported: GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and their
// *ForSequenceClassification reward-model forms with one label. Loading maps every tensor of the ParamLayout
// (params.h) from the files, converting F16/BF16/F64 to fp32; saving writes an fp32 directory that transformers loads
// into the same class.
#pragma once
#include <memory>
#include <string>

#include "config.h"
#include "lora.h"
#include "model.h"

namespace optune {

// Parses a transformers config.json. `where` names the file in error messages.
ModelConfig config_from_hf_json(const std::string& json_text, const std::string& where);
// dir/config.json as load_checkpoint reads it (a multimodal Gemma 3: its language model), without the weights.
ModelConfig read_model_config(const std::string& dir);

// A config.json for `cfg` (pretty-printed, transformers' field names, dtype float32).
std::string config_to_hf_json(const ModelConfig& cfg);

// A multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration) loads as its language model; this keeps the rest
// of it by reference, so that saving writes the whole multimodal model again: its config.json, the names its
// language model's tensors had, and where its other tensors (the vision tower, the projector) are, read again from
// there (into F32) by each save. Those tensors never change: optune tunes the language model only.
struct MultimodalParts {
  std::string config_text;  // the source's config.json
  std::string config_path;  // (for messages)
  std::string prefix;       // the language model's tensor names: "language_model.model." (save_pretrained) or
                            // "model.language_model." (transformers >= 4.52's module names)
  struct Tensor {
    std::string name;       // as stored
    std::string file;       // the safetensors file holding it
    std::vector<int64_t> shape;
  };
  std::vector<Tensor> tensors;  // the vision tower's and the projector's, in file order
};

// Reads dir/config.json and the weights. Throws optune::Error naming the file and tensor on any problem.
std::unique_ptr<Model> load_checkpoint(const std::string& dir);

// Writes dir/config.json and dir/model.safetensors (fp32, tied lm_head omitted, metadata {"format": "pt"}). A model
// with LoRA adapters is saved merged (W + scale B A), a complete model any tool loads, and its adapters go to
// dir/adapter/ in PEFT's format (a subdirectory: transformers would read an adapter_config.json beside the weights
// as "load the base model it names, then this adapter"). A model loaded from a multimodal checkpoint
// (Model::multimodal) is saved as that multimodal model: its config.json (dtype float32), its language model's
// tensors under the names they had, and its vision tower and projector copied from the files it was loaded from
// (which must still be there: checked before anything is written).
// Creates dir if needed. Each file is written to a temporary name, fsynced and renamed, then dir is fsynced, so a
// crash leaves either the old file or the new one.
void save_checkpoint(const Model& m, const std::string& dir);

// AdamW state (moments and step count) for resuming a run exactly: dir/optimizer.safetensors with flat tensors
// "exp_avg" and "exp_avg_sq" in the parameter layout's order and metadata {"step", "num_params"}. Written
// atomically like save_checkpoint. A model that has taken no optimizer step saves step 0 and zero moments.
void save_optimizer_state(const Model& m, const std::string& dir);
// Throws optune::Error when the file is missing or was saved for a model with a different parameter count.
void load_optimizer_state(Model& m, const std::string& dir);

// ---- LoRA adapters in PEFT's format (lora.h) ------------------------------------------------------------------
// dir/adapter_config.json and dir/adapter_model.safetensors (fp32), written atomically; dir is created if needed.
void save_lora_adapter(const Model& m, const std::string& dir);
// The LoraConfig of dir/adapter_config.json (r, lora_alpha, target_modules). Refuses what optune does not
// implement (DoRA, rsLoRA, trained biases, a regex target_modules) with the field named.
LoraConfig read_lora_config(const std::string& dir);
// Reads dir/adapter_model.safetensors into m's adapters, which must have been enabled with the rank, alpha and
// targets of dir/adapter_config.json. Throws optune::Error naming the file and tensor on any mismatch.
void load_lora_adapter(Model& m, const std::string& dir);

}  // namespace optune
