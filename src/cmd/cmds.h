/* cmds.h (private) -- the subcommands. Each takes its arguments with
 * argv[0] = the command's name and returns GQ_OK, 1 (--help was printed) or a negative gq_status
 * with gq_errmsg() set; main() prints "gq <command>: error: <message>" (so messages do not begin
 * with "gq <command>: ") and turns the status into the exit code (main.c: exit_codes[]). */
#ifndef GQ_CMDS_H
#define GQ_CMDS_H

int gq_cmd_quantize(int argc, char **argv);
int gq_cmd_ppl(int argc, char **argv);
int gq_cmd_inspect(int argc, char **argv);
int gq_cmd_tokenize(int argc, char **argv);
int gq_cmd_calib(int argc, char **argv);
int gq_cmd_eval(int argc, char **argv);

#endif /* GQ_CMDS_H */
