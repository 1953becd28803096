/* Takes a node's tc programs off its interfaces and puts them back, so that a benchmark
 * can measure one lab's path with and without them (bench/datapath.sh).
 *
 *   tcx_toggle detach LINKDIR SAVEDIR STATEDIR
 *   tcx_toggle attach LINKDIR SAVEDIR STATEDIR
 *
 * LINKDIR is a node's pinned links (/sys/fs/bpf/fathom/LAB/NODE/links). detach: for each
 * tc link there (names ending in _in or _out; the socket hooks stay), pins its program
 * under SAVEDIR (bpffs), writes its interface and attach type to STATEDIR, and detaches
 * the link (its pin stays, defunct). attach: makes a new link for each saved program and
 * pins it where the old one was. Run inside the node's network namespace: a tcx link
 * names its interface by ifindex. detach stops at the first error (a link whose detach
 * failed keeps no saved state); attach goes on through every saved link and exits
 * non-zero at the end when one failed, so that a restore puts back all it can. */
#include <bpf/bpf.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* struct bpf_link_info as the kernel fills it for a tcx link; this libbpf's headers
 * predate tcx: type, id, prog_id, then (at 16) the tcx member's ifindex and
 * attach_type. */
#define LINK_INFO_PROG_ID 8
#define LINK_INFO_TCX_IFINDEX 16
#define LINK_INFO_TCX_ATTACH_TYPE 20
#define BPF_LINK_TYPE_TCX_ 11

static int is_tc_link(const char *name)
{
	size_t n = strlen(name);

	return (n > 3 && !strcmp(name + n - 3, "_in")) || (n > 4 && !strcmp(name + n - 4, "_out"));
}

static int detach(const char *link_path, const char *prog_path, const char *state_path)
{
	uint8_t info[256] = {0};
	uint32_t len = sizeof(info), prog_id, ifindex, attach_type;
	int link = bpf_obj_get(link_path), prog;
	FILE *f;

	if (link < 0) {
		fprintf(stderr, "open %s: %s\n", link_path, strerror(errno));
		return -1;
	}
	if (bpf_obj_get_info_by_fd(link, info, &len) < 0) {
		fprintf(stderr, "%s: link info: %s\n", link_path, strerror(errno));
		return -1;
	}
	uint32_t type;

	memcpy(&type, info, 4);
	if (type != BPF_LINK_TYPE_TCX_) {
		fprintf(stderr, "%s: not a tcx link (type %u)\n", link_path, type);
		return -1;
	}
	memcpy(&prog_id, info + LINK_INFO_PROG_ID, 4);
	memcpy(&ifindex, info + LINK_INFO_TCX_IFINDEX, 4);
	memcpy(&attach_type, info + LINK_INFO_TCX_ATTACH_TYPE, 4);
	if (ifindex == 0) {
		fprintf(stderr, "%s: already detached\n", link_path);
		return -1;
	}
	prog = bpf_prog_get_fd_by_id(prog_id);
	if (prog < 0 || (unlink(prog_path), bpf_obj_pin(prog, prog_path)) < 0) {
		fprintf(stderr, "keep program of %s at %s: %s\n", link_path, prog_path, strerror(errno));
		return -1;
	}
	f = fopen(state_path, "w");
	if (!f || fprintf(f, "%u %u\n", ifindex, attach_type) < 0 || fclose(f)) {
		fprintf(stderr, "write %s: %s\n", state_path, strerror(errno));
		return -1;
	}
	if (bpf_link_detach(link) < 0) {
		fprintf(stderr, "detach %s: %s\n", link_path, strerror(errno));
		unlink(state_path);     /* still attached: nothing for attach to restore */
		unlink(prog_path);
		return -1;
	}
	close(prog);
	close(link);
	return 0;
}

static int attach(const char *link_path, const char *prog_path, const char *state_path)
{
	unsigned ifindex, attach_type;
	FILE *f = fopen(state_path, "r");
	int prog, link;

	if (!f) {
		if (errno == ENOENT)
			return 0;       /* not detached by us */
		fprintf(stderr, "open %s: %s\n", state_path, strerror(errno));
		return -1;
	}
	if (fscanf(f, "%u %u", &ifindex, &attach_type) != 2) {
		fprintf(stderr, "read %s: not 'ifindex attach_type'\n", state_path);
		fclose(f);
		return -1;
	}
	fclose(f);
	prog = bpf_obj_get(prog_path);
	if (prog < 0) {
		fprintf(stderr, "open %s: %s\n", prog_path, strerror(errno));
		return -1;
	}
	link = bpf_link_create(prog, ifindex, attach_type, NULL);
	if (link < 0) {
		fprintf(stderr, "attach %s to ifindex %u: %s\n", prog_path, ifindex, strerror(errno));
		close(prog);
		return -1;
	}
	unlink(link_path);
	if (bpf_obj_pin(link, link_path) < 0) {
		fprintf(stderr, "pin %s: %s\n", link_path, strerror(errno));
		close(link);
		close(prog);
		return -1;
	}
	close(link);
	close(prog);
	unlink(state_path);
	unlink(prog_path);
	return 0;
}

int main(int argc, char **argv)
{
	char link_path[1024], prog_path[1024], state_path[1024];
	struct dirent *e;
	int n = 0, failed = 0, off;
	DIR *d;

	if (argc != 5 || (strcmp(argv[1], "detach") && strcmp(argv[1], "attach"))) {
		fprintf(stderr, "usage: %s detach|attach LINKDIR SAVEDIR STATEDIR\n", argv[0]);
		return 2;
	}
	off = !strcmp(argv[1], "detach");
	d = opendir(argv[2]);
	if (!d) {
		fprintf(stderr, "open %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	while ((e = readdir(d))) {
		if (!is_tc_link(e->d_name))
			continue;
		snprintf(link_path, sizeof(link_path), "%s/%s", argv[2], e->d_name);
		/* bpffs refuses names with a dot */
		snprintf(prog_path, sizeof(prog_path), "%s/%s_prog", argv[3], e->d_name);
		snprintf(state_path, sizeof(state_path), "%s/%s.link", argv[4], e->d_name);
		if ((off ? detach : attach)(link_path, prog_path, state_path) < 0) {
			if (off)
				return 1;
			failed++;
			continue;
		}
		n++;
	}
	closedir(d);
	printf("%s %d\n", argv[1], n);
	return failed ? 1 : 0;
}
