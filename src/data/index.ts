// User data: prompt files and their encoding for a policy.

export { encodePrompt } from "./encode_prompt.js";
export type { EncodePromptOptions } from "./encode_prompt.js";
export { DEFAULT_MESSAGES_FIELD, DEFAULT_PROMPT_FIELD, parsePromptLines, readPromptFile, splitPrompts } from "./prompt_file.js";
export type { PromptFileOptions, PromptRecord, PromptSplit, SplitOptions } from "./prompt_file.js";
