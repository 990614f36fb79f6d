/*
 * pam_rds_iam.so - PAM module for the local RDS emulator.
 *
 * PostgreSQL (pg_hba method "pam") calls this module for IAM users. It reads
 * PAM_USER, asks for the password (the RDS IAM auth token) through the PAM
 * conversation with PAM_PROMPT_ECHO_OFF, which PostgreSQL answers with the
 * client's password packet, and runs a verifier program, writing
 *
 *     USER '\0' TOKEN
 *
 * whole to its stdin (never argv or environment: those are visible to other
 * processes). Authentication succeeds only if the verifier exits with 0.
 * Unlike pam_exec (which cuts passwords at 511 bytes) tokens of any size up to
 * MAX_TOKEN bytes pass through.
 *
 * Service file line:
 *     auth required /path/pam_rds_iam.so /abs/path/program [args...]
 *
 * Build: gcc -O2 -Wall -Wextra -shared -fPIC -o pam_rds_iam.so pam_rds_iam.c -lpam
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#define PAM_SM_AUTH
#define PAM_SM_ACCOUNT
#include <security/pam_ext.h>
#include <security/pam_modules.h>

#define MAX_TOKEN (64 * 1024)

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void scrub_free(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* Ask the application (PostgreSQL) for the password. *out is malloc'ed. */
static int ask_password(pam_handle_t *pamh, char **out)
{
    const struct pam_conv *conv = NULL;
    struct pam_message msg;
    const struct pam_message *msgp = &msg;
    struct pam_response *resp = NULL;
    int rc;

    *out = NULL;
    rc = pam_get_item(pamh, PAM_CONV, (const void **)&conv);
    if (rc != PAM_SUCCESS || conv == NULL || conv->conv == NULL)
        return PAM_CONV_ERR;

    msg.msg_style = PAM_PROMPT_ECHO_OFF;
    msg.msg = "Password: ";
    rc = conv->conv(1, &msgp, &resp, conv->appdata_ptr);
    if (rc != PAM_SUCCESS) {
        if (resp != NULL) {
            scrub_free(resp[0].resp);
            free(resp);
        }
        return rc == PAM_CONV_AGAIN ? PAM_INCOMPLETE : PAM_CONV_ERR;
    }
    if (resp == NULL)
        return PAM_CONV_ERR;
    if (resp[0].resp == NULL) {
        free(resp);
        return PAM_CONV_ERR;
    }
    *out = resp[0].resp;
    free(resp);
    return PAM_SUCCESS;
}

static void child_exec(char *const *args, int stdin_fd)
{
    static char *const envp[] = {"PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8", NULL};
    sigset_t none;
    int devnull, sig;

    if (dup2(stdin_fd, STDIN_FILENO) < 0)
        _exit(127);
    devnull = open("/dev/null", O_WRONLY);
    if (devnull < 0 || dup2(devnull, STDOUT_FILENO) < 0)
        _exit(127);
    /* stderr stays (it goes to the PostgreSQL server log); close the rest,
     * notably the client's socket. */
    if (close_range(3, ~0U, 0) != 0) {
        long maxfd = sysconf(_SC_OPEN_MAX);
        int fd;
        if (maxfd < 0 || maxfd > 65536)
            maxfd = 65536;
        for (fd = 3; fd < maxfd; fd++)
            close(fd);
    }
    /* Clean signal state: PostgreSQL blocks/ignores some during auth. */
    for (sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    execve(args[0], args, envp);
    _exit(127);
}

static int run_verifier(pam_handle_t *pamh, int argc, const char **argv,
                        const char *user, const char *token)
{
    struct sigaction ign, dfl, old_pipe, old_chld;
    char **args;
    int fds[2], status = 0, write_failed = 0, i;
    pid_t pid, w;

    if (argc < 1 || argv[0] == NULL || argv[0][0] != '/') {
        pam_syslog(pamh, LOG_ERR, "usage: pam_rds_iam.so /abs/program [args]");
        return PAM_SERVICE_ERR;
    }
    /* A PAM module's argv is not NULL-terminated: copy it for execve. */
    args = calloc((size_t)argc + 1, sizeof(*args));
    if (args == NULL)
        return PAM_BUF_ERR;
    for (i = 0; i < argc; i++)
        args[i] = (char *)argv[i];
    args[argc] = NULL;

    if (pipe2(fds, O_CLOEXEC) != 0) {
        pam_syslog(pamh, LOG_ERR, "pipe: %m");
        free(args);
        return PAM_SYSTEM_ERR;
    }

    /* Writing to a dead verifier must not kill the backend, and the child
     * must stay waitable even if the host ignores SIGCHLD. */
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGPIPE, &ign, &old_pipe);
    sigaction(SIGCHLD, &dfl, &old_chld);

    pid = fork();
    if (pid < 0) {
        pam_syslog(pamh, LOG_ERR, "fork: %m");
        close(fds[0]);
        close(fds[1]);
        sigaction(SIGPIPE, &old_pipe, NULL);
        sigaction(SIGCHLD, &old_chld, NULL);
        free(args);
        return PAM_SYSTEM_ERR;
    }
    if (pid == 0)
        child_exec(args, fds[0]); /* does not return */

    close(fds[0]);
    if (write_all(fds[1], user, strlen(user)) != 0 ||
        write_all(fds[1], "", 1) != 0 ||
        write_all(fds[1], token, strlen(token)) != 0)
        write_failed = 1;
    close(fds[1]);

    do {
        w = waitpid(pid, &status, 0);
    } while (w < 0 && errno == EINTR);

    sigaction(SIGPIPE, &old_pipe, NULL);
    sigaction(SIGCHLD, &old_chld, NULL);
    free(args);

    if (w < 0) {
        pam_syslog(pamh, LOG_ERR, "waitpid: %m");
        return PAM_SYSTEM_ERR;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !write_failed)
        return PAM_SUCCESS;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
        pam_syslog(pamh, LOG_ERR, "cannot execute verifier %s", argv[0]);
        return PAM_AUTHINFO_UNAVAIL;
    }
    return PAM_AUTH_ERR;
}

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc,
                                   const char **argv)
{
    const char *user = NULL;
    char *token = NULL;
    int rc;

    (void)flags;
    rc = pam_get_user(pamh, &user, NULL);
    if (rc != PAM_SUCCESS)
        return rc;
    if (user == NULL || *user == '\0')
        return PAM_USER_UNKNOWN;

    rc = ask_password(pamh, &token);
    if (rc != PAM_SUCCESS)
        return rc;
    if (strlen(token) > MAX_TOKEN) {
        scrub_free(token);
        return PAM_AUTH_ERR;
    }
    rc = run_verifier(pamh, argc, argv, user, token);
    scrub_free(token);
    return rc;
}

PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc,
                              const char **argv)
{
    (void)pamh;
    (void)flags;
    (void)argc;
    (void)argv;
    return PAM_SUCCESS;
}

PAM_EXTERN int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc,
                                const char **argv)
{
    (void)pamh;
    (void)flags;
    (void)argc;
    (void)argv;
    return PAM_SUCCESS;
}
