// Tokenizers, chat templates and stop tokens of Hugging Face model directories.

export { ChatTemplate, checkMessages, findChatTemplate } from "./chat_template.js";
export type { ChatMessage, ChatTemplateArgs, RenderOptions } from "./chat_template.js";
export { readStopTokens } from "./generation_config.js";
export type { StopTokens } from "./generation_config.js";
export { HfTokenizer, templateOptions } from "./hf_tokenizer.js";
export type { HfTokenizerOptions } from "./hf_tokenizer.js";
export { checkReference, loadModelDir } from "./model_dir.js";
export type { LoadedModelDir, ModelDirOptions } from "./model_dir.js";
